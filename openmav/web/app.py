"""The FastAPI app of the web explorer: a JSON API (with OpenAPI schema) and the page.

``create_app(lm)`` serves one loaded model.  Every model computation holds one
FIFO gate (never two forwards at once); evaluating all heads, studies and circuit
discovery are jobs run one after another, with progress by polling (``GET /api/jobs/{id}``) or
Server-Sent Events (``GET /api/jobs/{id}/events``).  Bad input answers 422 with
a message naming the valid range; no request can stop the server.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..backends.loading import LoadedModel
from ..errors import InputError, OpenMavError
from . import schemas as S
from .jobs import BusyError, JobQueue, ModelGate
from .service import ExplorerService, _plain
from .tasks import circuit_job, evaluate_job, features, study_job

STATIC = resources.files("openmav.web") / "static"


def _ranges(service: ExplorerService) -> dict[str, str]:
    p, v = service.parts, service.vocab_size
    tokens = f"valid token ids are 0-{v - 1}"
    return {"layer": f"valid layers are 0-{p.n_layers - 1}", "head": f"valid heads are 0-{p.n_heads - 1}",
            "token_id": tokens, "target_id": tokens, "token_a": tokens, "token_b": tokens,
            "prompt": f"prompts are 1-{S.MAX_PROMPT_CHARS} characters and at most {service.max_prompt_tokens} tokens"}


def _error_handlers(app: FastAPI, service: ExplorerService) -> None:
    ranges = _ranges(service)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        """422 with one readable line per problem, naming the valid range for model-dependent fields."""
        lines = []
        for err in exc.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            hint = ranges.get(loc[-1] if loc else "", "")
            lines.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}" + (f" ({hint})" if hint else ""))
        return JSONResponse({"detail": "; ".join(lines), "errors": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(BusyError)
    async def busy(request: Request, exc: BusyError):
        return JSONResponse({"detail": str(exc)}, status_code=429)

    @app.exception_handler(OpenMavError)
    async def user_error(request: Request, exc: OpenMavError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ImportError)
    async def missing(request: Request, exc: ImportError):
        return JSONResponse({"detail": f"this analysis is not available in this install ({exc})"}, status_code=501)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def create_app(lm: LoadedModel, max_prompt_tokens: int = 128, max_jobs: int = 4,
               request_wait_s: float = 120.0) -> FastAPI:
    """The explorer app for ``lm``: prompts up to ``max_prompt_tokens``, at most ``max_jobs`` jobs."""
    app = FastAPI(title="OpenMAV explorer", version="1",
                  description="Attention heads, head ablation, studies and circuits of one loaded model.")
    service = ExplorerService(lm, max_prompt_tokens=max_prompt_tokens)
    gate = ModelGate()
    jobs = JobQueue(gate, max_jobs=max_jobs)
    app.state.service, app.state.gate, app.state.jobs = service, gate, jobs
    _error_handlers(app, service)

    def held():
        return gate.hold("a request", timeout=request_wait_s)

    def get_job(job_id: int):
        job = jobs.jobs.get(job_id)
        if job is None:
            raise InputError(f"no job {job_id}: known jobs are {sorted(jobs.jobs) or 'none'}")
        return job

    @app.get("/api/model", response_model=S.ModelInfo)
    def model_info():
        p = lm.parts
        return S.ModelInfo(name=lm.name, n_layers=p.n_layers, n_heads=p.n_heads, n_kv_heads=p.n_kv_heads,
                           vocab_size=service.vocab_size, max_prompt_tokens=max_prompt_tokens, max_jobs=max_jobs,
                           presets=service.presets, features=features())

    @app.post("/api/tokenize", response_model=list[S.TokenInfo])
    def tokenize(req: S.PromptRequest):
        return service.tokens(service.encode(req.prompt))

    @app.post("/api/attention", response_model=S.AttentionResponse)
    def attention(req: S.AttentionRequest):
        ids = service.encode(req.prompt)
        for h in req.heads:
            service.check_head(h.layer, h.head)
        with held():
            att = service.attention(ids)
        heads = [{"layer": h.layer, "head": h.head, "weights": att[h.layer, h.head].round(6).tolist()}
                 for h in req.heads]
        return {"tokens": service.tokens(ids), "heads": heads}

    @app.post("/api/predict", response_model=S.PredictResponse)
    def predict(req: S.PredictRequest):
        ids = service.encode(req.prompt)
        ablations = service.to_ablations(req.ablations)
        with held():
            return service.predict(ids, ablations, req.position, req.token_id, req.top_k)

    @app.get("/api/head_scores")
    def head_scores():
        """Previous-token, duplicate-token and induction score of every head, ``[layer][head]``."""
        with held():
            return service.scores()

    def started(job):
        ahead = sum(1 for j in jobs.active() if j.id < job.id)
        return S.JobStarted(job_id=job.id, status=job.status, queued_ahead=ahead)

    @app.post("/api/evaluations", response_model=S.JobStarted)
    def start_evaluation(req: S.EvaluateRequest):
        """Start evaluating all heads (each ablated alone: KL and change of the top token's probability,
        ``[layer][head]``); returns a job id, with one progress event per batched forward."""
        return started(evaluate_job(service, jobs, req))

    @app.post("/api/studies", response_model=S.JobStarted)
    def start_study(req: S.StudyRequest):
        """Start a generic (largest KL) or targeted (make ``target_id`` the top token) study; returns a job id."""
        return started(study_job(service, jobs, req))

    @app.post("/api/circuit", response_model=S.JobStarted)
    def start_circuit(req: S.CircuitRequest):
        """Start circuit discovery (attribution patching, verified by ablation); returns a job id."""
        return started(circuit_job(service, jobs, req))

    @app.get("/api/jobs", response_model=list[S.JobState])
    def list_jobs():
        return [j.summary() for j in sorted(jobs.jobs.values(), key=lambda j: j.id)]

    @app.get("/api/jobs/{job_id}", response_model=S.JobState)
    def job_state(job_id: int):
        return get_job(job_id).summary()

    @app.post("/api/jobs/{job_id}/cancel", response_model=S.JobState)
    def cancel_job(job_id: int):
        job = get_job(job_id)
        jobs.cancel(job)
        return job.summary()

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: int):
        """Server-Sent Events: one ``progress`` event per step, then one ``end`` event with the job's state."""
        job = get_job(job_id)

        async def stream():
            sent = 0
            while True:
                while sent < len(job.events):
                    yield f"event: progress\ndata: {json.dumps(_plain(job.events[sent]))}\n\n"
                    sent += 1
                if job.finished and sent >= len(job.events):
                    yield f"event: end\ndata: {json.dumps(_plain(job.summary()))}\n\n"
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
