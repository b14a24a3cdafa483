"""Benchmark: the explorer's control endpoints while a job runs and the model's request line is full.

    .venv/bin/python bench/bench_web_flood.py [--model smollm2-135m] [--flood 45] [--rounds 20]

Starts the explorer on a free loopback port (a real uvicorn server), starts a real job (evaluating
every head of the model), sends ``--flood`` concurrent ``/api/predict`` requests with new prompts,
waits until the line is full (the rest answered 429), then times ``--rounds`` rounds of the control
endpoints: model info, job status, the job list, the page, and at the end cancel.  Prints each
endpoint's median, 95th percentile and worst latency, how long the 429s took, and what the flood's
requests got.  Everything is bounded: the job is cancelled at the end and every request has a timeout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from openmav.backends.loading import load_model
from openmav.web.app import create_app
from openmav.web.server import running_server

IOI = "When Mary and John went to the store, John gave a drink to"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--flood", type=int, default=45)
    p.add_argument("--waiting", type=int, default=32, help="the line's length (create_app's max_waiting)")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    lm = load_model(args.model, device="cpu", progress=lambda m: None)
    app = create_app(lm, max_waiting=args.waiting)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        job = http.post("/api/evaluations", json={"prompt": IOI, "kind": "zero"}).json()["job_id"]
        end = time.monotonic() + 60
        while http.get(f"/api/jobs/{job}").json()["status"] != "running" and time.monotonic() < end:
            time.sleep(0.05)
        answers: list = [None] * args.flood
        many = httpx.Limits(max_connections=args.flood, max_keepalive_connections=args.flood)
        flooder = httpx.Client(base_url=url, timeout=600, limits=many)

        def predict(i: int) -> None:
            t0 = time.perf_counter()
            r = flooder.post("/api/predict", json={"prompt": f"{IOI} {i} times", "top_k": 3})
            answers[i] = (r.status_code, time.perf_counter() - t0)

        with flooder, ThreadPoolExecutor(max_workers=args.flood) as pool:
            futures = [pool.submit(predict, i) for i in range(args.flood)]
            expected = max(0, args.flood - args.waiting)
            end = time.monotonic() + 60
            while (sum(1 for a in answers if a and a[0] == 429) < expected or app.state.line.waiting() < min(
                    args.flood, args.waiting)) and time.monotonic() < end:
                time.sleep(0.02)
            full = app.state.line.waiting()
            for path in ("/api/model", f"/api/jobs/{job}", "/api/jobs", "/"):
                http.get(path)  # warm the connection
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, path in (("GET /api/model", "/api/model"), ("GET /api/jobs/{id}", f"/api/jobs/{job}"),
                                   ("GET /api/jobs", "/api/jobs"), ("GET / (the page)", "/")):
                    t0 = time.perf_counter()
                    assert http.get(path).status_code == 200
                    times.setdefault(name, []).append(time.perf_counter() - t0)
            still_full = app.state.line.waiting()
            status = http.get(f"/api/jobs/{job}").json()["status"]
            t0 = time.perf_counter()
            http.post(f"/api/jobs/{job}/cancel")
            times["POST /api/jobs/{id}/cancel"] = [time.perf_counter() - t0]
            for fut in futures:
                fut.result(timeout=900)
    refused = [s for code, s in answers if code == 429]
    codes = [code for code, _ in answers]
    print(f"\n{args.model}, {args.flood} concurrent /api/predict with new prompts while an evaluation job "
          f"ran ({status} during the probes); line of {args.waiting}: {full} waiting before the probes, "
          f"{still_full} after\n")
    print("| endpoint | median ms | p95 ms | worst ms |\n|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {1000 * statistics.median(ts):.1f} | {1000 * pct(ts, 0.95):.1f} | {1000 * max(ts):.1f} |")
    if refused:
        print(f"| 429 answers ({len(refused)}) | {1000 * statistics.median(refused):.1f} | "
              f"{1000 * pct(refused, 0.95):.1f} | {1000 * max(refused):.1f} |")
    print(f"\nflood answers: {codes.count(200)} x 200, {codes.count(429)} x 429, "
          f"others {[c for c in codes if c not in (200, 429)]}")


if __name__ == "__main__":
    main()
