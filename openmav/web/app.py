"""The FastAPI app of the web explorer: a JSON API (with OpenAPI schema) and the page.

``create_app(lm)`` serves one loaded model: attention per head and for the whole model (thumbnails),
the logit lens, direct logit attribution, predictions under ablation, head scores, and jobs.  Every
model computation holds one FIFO gate (never two forwards at once); evaluating all heads, studies and circuit
discovery are jobs run one after another, with progress by polling (``GET /api/jobs/{id}``) or
Server-Sent Events (``GET /api/jobs/{id}/events``).  The quick requests that need the model wait in a
bounded line (:class:`~openmav.web.jobs.RequestLine`) on a thread of their own, never on a server
thread: the endpoints that do not touch the model (model info, jobs, cancel, the page) are answered on
the event loop at once however busy the model is, and a request that finds the line full answers 429
with ``Retry-After`` at once.  Bad input answers 422 with
a message naming the valid range, an unknown job 404; every error answer is
``{"detail": "..."}`` (:class:`~openmav.web.schemas.ErrorResponse`), as the OpenAPI
schema declares, and no request can stop the server.

Only requests addressed to this server are answered (:class:`~openmav.web.hosts.HostCheck`,
400 otherwise: DNS rebinding); a request that is not a GET or HEAD and carries another site's
``Origin`` answers 403 (:class:`~openmav.web.hosts.OriginCheck`); no CORS headers are sent.  ``/docs`` is Swagger UI
served from the ``fastapi-offline`` package's copy, so it works without a network.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Iterable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.loading import LoadedModel
from ..errors import OpenMavError
from . import schemas as S
from .hosts import HostCheck, OriginCheck
from .jobs import BusyError, JobQueue, ModelGate, RequestLine
from .scans import scan_router
from .service import ExplorerService, _plain
from .tasks import circuit_job, evaluate_job, features, study_job

STATIC = resources.files("openmav.web") / "static"


def docs_assets():
    """The folder of Swagger UI's script and style (the ``fastapi-offline`` package), or None if missing."""
    try:
        folder = resources.files("fastapi_offline") / "static"
    except ImportError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() and (folder / "swagger-ui.css").is_file() else None


class EventStream(StreamingResponse):
    """Server-Sent Events (so the schema declares ``text/event-stream``)."""

    media_type = "text/event-stream"


#: One event of a job's stream, as OpenAPI before 3.2 describes an event stream (each event, not the whole).
JOB_EVENT = {"description": "one event per progress step, then one `end` event",
             "content": {"text/event-stream": {"schema": {
                 "type": "object", "required": ["event", "data"],
                 "properties": {"event": {"type": "string", "enum": ["progress", "end"]},
                                "data": {"type": "string", "contentMediaType": "application/json",
                                         "description": "progress: the step as a JSON object; "
                                                        "end: the job's state (JobState) as JSON"}}}}}}


_ERRORS = {
    400: "bad Host header (not this server), or a body that is not JSON text",
    403: "the request came from a page of another site (its Origin is not this server)",
    404: "no such job",
    422: "invalid input; the message names the valid range",
    429: "busy: too many jobs or requests waiting for the model, or the model stayed busy longer than a request "
         "may wait; the Retry-After header says when to try again",
    501: "this analysis is not available in this install",
}


def _errors(*codes: int, json_route: bool = True) -> dict:
    """OpenAPI ``responses`` for 400 (every route) and these error codes, each an
    :class:`~openmav.web.schemas.ErrorResponse` in JSON.

    A route whose own answer is not JSON (``json_route=False``) names the schema by reference, as
    FastAPI would file a ``model`` under the route's media type.
    """
    codes = (400, *codes)
    if json_route:
        return {code: {"model": S.ErrorResponse, "description": _ERRORS[code]} for code in codes}
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {code: {"description": _ERRORS[code], "content": ref} for code in codes}


def _safe(value):
    """``value`` with every string made writable as UTF-8 (a lone surrogate becomes ``\\ud800``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (int, float, bool)) else _safe(str(value))


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
        errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return JSONResponse(_safe({"detail": "; ".join(lines), "errors": errors}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """404, 405 and FastAPI's 400 (a body that is not JSON text) as ``{"detail": "..."}``."""
        return JSONResponse(_safe({"detail": str(exc.detail)}), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(BusyError)
    async def busy(request: Request, exc: BusyError):
        return JSONResponse(_safe({"detail": str(exc)}), status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(OpenMavError)
    async def user_error(request: Request, exc: OpenMavError):
        return JSONResponse(_safe({"detail": str(exc)}), status_code=422)

    @app.exception_handler(ImportError)
    async def missing(request: Request, exc: ImportError):
        return JSONResponse(_safe({"detail": f"this analysis is not available in this install ({exc})"}),
                            status_code=501)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        return JSONResponse(_safe({"detail": f"internal error: {type(exc).__name__}: {exc}"}), status_code=500)


def create_app(lm: LoadedModel, max_prompt_tokens: int = 128, max_jobs: int = 4,
               request_wait_s: float = 120.0, hosts: Iterable[str] = (), max_waiting: int = 32,
               scans: Iterable = ()) -> FastAPI:
    """The explorer app for ``lm``: prompts up to ``max_prompt_tokens``, at most ``max_jobs`` jobs.

    Requests must be addressed to 127.0.0.1, localhost, [::1] or one of ``hosts`` (the
    host ``mav serve`` binds), with the server's port; any other Host header answers 400.
    At most ``max_waiting`` requests wait for the model (more answer 429 at once), each at
    most ``request_wait_s`` seconds before it starts (then 429).
    ``scans``: finished corpus scans (:class:`openmav.scan.query.Scan` objects or their folders) that the
    page's Neurons and Heads tabs show (:mod:`openmav.web.scans`).
    """
    app = FastAPI(title="OpenMAV explorer", version="1", docs_url=None, redoc_url=None,
                  description="Attention heads, head ablation, studies and circuits of one loaded model.")
    app.add_middleware(OriginCheck)
    app.add_middleware(HostCheck, hosts=list(hosts))  # added last: runs first
    service = ExplorerService(lm, max_prompt_tokens=max_prompt_tokens)
    gate = ModelGate()
    jobs = JobQueue(gate, max_jobs=max_jobs)
    line = RequestLine(gate, max_waiting=max_waiting)
    app.state.service, app.state.gate, app.state.jobs, app.state.line = service, gate, jobs, line
    _error_handlers(app, service)
    app.include_router(scan_router(scans, service, gate, wait_s=request_wait_s))

    async def on_model(fn):
        """``fn()`` on the model, in its turn, awaited without holding a thread (429 if the line is full
        or it could not start within ``request_wait_s``)."""
        fut = line.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), request_wait_s)
        except asyncio.TimeoutError:
            if fut.cancel():
                raise BusyError(f"the model stayed busy ({gate.holder or 'other requests'}) for "
                                f"{request_wait_s:g} s; try again when it is done",
                                retry_after=line.retry_after()) from None
            return await asyncio.wrap_future(fut)  # it has started: its answer comes soon
        except asyncio.CancelledError:  # the client went away: it need not run
            fut.cancel()
            raise

    def get_job(job_id: int):
        job = jobs.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}: known jobs are {sorted(jobs.jobs) or 'none'}")
        return job

    @app.get("/api/model", response_model=S.ModelInfo, responses=_errors())
    async def model_info():
        p = lm.parts
        return S.ModelInfo(name=lm.name, n_layers=p.n_layers, n_heads=p.n_heads,
                           attention_layers=list(p.attention_layers), n_kv_heads=p.n_kv_heads,
                           vocab_size=service.vocab_size, max_prompt_tokens=max_prompt_tokens, max_jobs=max_jobs,
                           presets=service.presets, features=features())

    @app.post("/api/tokenize", response_model=list[S.TokenInfo], responses=_errors(403, 422))
    def tokenize(req: S.PromptRequest):
        return service.tokens(service.encode(req.prompt))

    @app.post("/api/attention", response_model=S.AttentionResponse, responses=_errors(403, 422, 429))
    async def attention(req: S.AttentionRequest):
        ids = service.encode(req.prompt)
        for h in req.heads:
            service.check_head(h.layer, h.head)
        att = await on_model(lambda: service.attention(ids))
        heads = [{"layer": h.layer, "head": h.head, "weights": att[h.layer, h.head].round(6).tolist()}
                 for h in req.heads]
        return {"tokens": service.tokens(ids), "heads": heads}

    @app.post("/api/model_view", response_model=S.ModelViewResponse, responses=_errors(403, 422, 429))
    async def model_view(req: S.ModelViewRequest):
        """Every layer x head's attention as a small thumbnail (the model view); max-pooled for long prompts."""
        ids = service.encode(req.prompt)
        return await on_model(lambda: service.model_view(ids, req.size))

    @app.post("/api/logit_lens", response_model=S.LogitLensResponse, responses=_errors(403, 422, 429))
    async def logit_lens(req: S.LogitLensRequest):
        """The logit lens at one position: the top-k next tokens read from the residual stream after each
        layer (final norm and unembedding), and a chosen token's probability and rank per layer."""
        ids = service.encode(req.prompt)
        return await on_model(lambda: service.logit_lens(ids, req.position, req.token_id, req.top_k))

    @app.post("/api/attribution", response_model=S.AttributionResponse, responses=_errors(403, 422, 429, 501))
    async def attribution(req: S.AttributionRequest):
        """Direct logit attribution: each head's contribution to one token's logit at one position, through
        its slice of the output projection and the unembedding (final norm frozen), and every other part's."""
        ids = service.encode(req.prompt)
        return await on_model(lambda: service.direct_logit_attribution(ids, req.position, req.token_id))

    @app.post("/api/predict", response_model=S.PredictResponse, responses=_errors(403, 422, 429, 501))
    async def predict(req: S.PredictRequest):
        ids = service.encode(req.prompt)
        ablations = service.to_ablations(req.ablations)
        return await on_model(lambda: service.predict(ids, ablations, req.position, req.token_id, req.top_k))

    @app.get("/api/head_scores", responses=_errors(422, 429, 501))
    async def head_scores():
        """Previous-token, duplicate-token and induction score of every head, ``[layer][head]``."""
        return await on_model(service.scores)

    def started(job):
        ahead = sum(1 for j in jobs.active() if j.id < job.id)
        return S.JobStarted(job_id=job.id, status=job.status, queued_ahead=ahead)

    @app.post("/api/evaluations", response_model=S.JobStarted, responses=_errors(403, 422, 429, 501))
    def start_evaluation(req: S.EvaluateRequest):
        """Start evaluating all heads (each ablated alone: KL, change of the top token's probability and of
        the logit difference ``logit[a] - logit[b]``, ``[layer][head]``); returns a job id, with one progress
        event per batched forward."""
        return started(evaluate_job(service, jobs, req))

    @app.post("/api/studies", response_model=S.JobStarted, responses=_errors(403, 422, 429, 501))
    def start_study(req: S.StudyRequest):
        """Start a generic (largest KL), targeted (make ``target_id`` the top token) or logit-difference
        (lower ``logit[token_a] - logit[token_b]`` most) study; returns a job id."""
        return started(study_job(service, jobs, req))

    @app.post("/api/circuit", response_model=S.JobStarted, responses=_errors(403, 422, 429, 501))
    def start_circuit(req: S.CircuitRequest):
        """Start circuit discovery (attribution patching for every head, the largest ``verify_k`` verified by
        real patching, the ``top_n`` largest verified effects drawn); returns a job id."""
        return started(circuit_job(service, jobs, req))

    @app.get("/api/jobs", response_model=list[S.JobState], responses=_errors())
    async def list_jobs():
        return [j.summary() for j in sorted(jobs.jobs.values(), key=lambda j: j.id)]

    @app.get("/api/jobs/{job_id}", response_model=S.JobState, responses=_errors(404, 422))
    async def job_state(job_id: int):
        return get_job(job_id).summary()

    @app.post("/api/jobs/{job_id}/cancel", response_model=S.JobState, responses=_errors(403, 404, 422))
    async def cancel_job(job_id: int):
        job = get_job(job_id)
        jobs.cancel(job)
        return job.summary()

    @app.get("/api/jobs/{job_id}/events", response_class=EventStream,
             responses={200: JOB_EVENT, **_errors(404, 422, json_route=False)})
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

        return EventStream(stream(), headers={"Cache-Control": "no-cache"})

    page = (STATIC / "index.html").read_bytes()  # served from memory: no file or thread needed per request

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    assets = docs_assets()
    if assets is not None:
        @app.get("/docs", include_in_schema=False)
        def docs():
            """Swagger UI from this install's files: no CDN, no validator badge (no request leaves the page)."""
            return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                       swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs/assets/swagger-ui.css",
                                       swagger_favicon_url="/docs/assets/favicon.png",
                                       oauth2_redirect_url=None, swagger_ui_parameters={"validatorUrl": None})

        app.mount("/docs/assets", StaticFiles(directory=str(assets)), name="docs-assets")
    app.state.docs = assets is not None
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
