"""The explorer stays on this machine and answers everything it is sent: loopback unless asked,
Host header checked (DNS rebinding), every answer as its OpenAPI schema says (Schemathesis),
404 for unknown jobs, 422 for text that is not Unicode, /docs without a network, no HTML from data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from openmav.web.app import STATIC, create_app
from openmav.web.hosts import HostCheck, is_loopback, split_host_header
from openmav.web.server import free_port, running_server

IOI = "When Mary and John went to the store, John gave a drink to"
PORT = 8050


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama", n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def app(lm):
    return create_app(lm, max_prompt_tokens=32, max_jobs=2)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url=f"http://127.0.0.1:{PORT}")


# ---- Host header ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"])
def test_loopback_host_headers_are_answered(client, host):
    r = client.get("/api/model", headers={"host": host})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", [
    f"evil.example:{PORT}",          # DNS rebinding: another site's name pointed at 127.0.0.1
    "evil.example",
    f"127.0.0.1:{PORT + 1}",         # the right name, another port
    "127.0.0.1",                     # no port: 80, not this server's
    f"localhost.:{PORT}",
    f"127.0.0.1.evil.example:{PORT}",
    f"::1:{PORT}",                   # IPv6 without brackets is not a Host
    f"[::1:{PORT}",
    f"localhost:{PORT}x",
    "",
])
def test_other_host_headers_answer_400(client, host):
    for method, path, body in (("GET", "/api/model", None), ("POST", "/api/predict", {"prompt": IOI}),
                               ("GET", "/", None), ("GET", "/openapi.json", None)):
        r = client.request(method, path, json=body, headers={"host": host})
        assert r.status_code == 400, (path, host, r.status_code)
        assert "bad Host header" in r.json()["detail"] and "127.0.0.1:8050" in r.json()["detail"]


def test_host_check_on_a_real_loopback_server(app):
    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/api/model").status_code == 200
            assert http.get("/api/model", headers={"host": f"localhost:{port}"}).status_code == 200
            bad = http.get("/api/model", headers={"host": f"attacker.example:{port}",
                                                  "origin": "http://attacker.example"})
            assert bad.status_code == 400
            assert not [h for h in bad.headers if h.lower().startswith("access-control-")]


def test_bound_host_is_accepted_only_when_given(lm):
    plain = TestClient(create_app(lm, max_prompt_tokens=32), base_url=f"http://127.0.0.1:{PORT}")
    named = TestClient(create_app(lm, max_prompt_tokens=32, hosts=["mybox.lan"]), base_url=f"http://127.0.0.1:{PORT}")
    assert plain.get("/api/model", headers={"host": f"mybox.lan:{PORT}"}).status_code == 400
    assert named.get("/api/model", headers={"host": f"mybox.lan:{PORT}"}).status_code == 200
    assert named.get("/api/model", headers={"host": f"other.lan:{PORT}"}).status_code == 400


def test_no_cors_headers(client):
    r = client.get("/api/model", headers={"origin": "http://attacker.example"})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    pre = client.options("/api/predict", headers={"origin": "http://attacker.example",
                                                  "access-control-request-method": "POST"})
    assert pre.status_code == 405 and not [h for h in pre.headers if h.lower().startswith("access-control-")]


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:8050", ("127.0.0.1", 8050)), ("[::1]:80", ("::1", 80)), ("LocalHost", ("localhost", None)),
    ("[::1]", ("::1", None)), ("a:b", None), ("::1", None), ("host:123456", None), (":80", None), ("[::1]x", None),
])
def test_split_host_header(value, expected):
    assert split_host_header(value) == expected


def test_two_host_headers_are_refused_and_the_arrival_address_is_accepted():
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope)

    check = HostCheck(inner)
    scope = {"type": "http", "server": ("127.0.0.1", PORT), "scheme": "http",
             "headers": [(b"host", f"127.0.0.1:{PORT}".encode())] * 2}
    assert not check.allowed(scope)
    assert check.allowed(dict(scope, headers=scope["headers"][:1]))
    # bound to every interface: the address the connection arrived on is this server (an IPv4 client of a
    # dual-stack socket shows as ::ffff:a.b.c.d); another address is not
    remote = {"type": "http", "scheme": "http", "server": ("::ffff:192.168.1.5", PORT)}
    assert check.allowed(dict(remote, headers=[(b"host", f"192.168.1.5:{PORT}".encode())]))
    assert check.allowed(dict(remote, headers=[(b"host", f"[::ffff:192.168.1.5]:{PORT}".encode())]))
    assert not check.allowed(dict(remote, headers=[(b"host", f"192.168.1.6:{PORT}".encode())]))


# ---- mav serve: loopback unless --allow-remote -----------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.20", "example.com"])
def test_serve_refuses_non_loopback_hosts_fast_without_loading(host):
    code = ("import sys; from openmav.cli import main; rc = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, "serve", "--host", host],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mav serve: error:") and "--host" in lines[0], done.stderr
    assert host == "" or "--allow-remote" in lines[0]  # an empty host may be refused as empty text first
    assert "Traceback" not in done.stderr and done.stdout.strip() == "no torch"
    assert elapsed < 20, elapsed


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_are_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.1", "localhost.example", "127.1"])
def test_other_hosts_are_not(host):
    assert not is_loopback(host)


def serve_with(monkeypatch, lm, argv):
    """Run ``mav serve ARGV`` with the model loader and uvicorn replaced; returns what uvicorn was given."""
    import uvicorn

    from openmav.backends import loading
    from openmav.cli import serve

    given = SimpleNamespace()
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: given.__dict__.update(app=app, **kw))
    args = serve.build_parser().parse_args(argv)
    assert serve.run(args) == 0
    return given


def test_allow_remote_warns_and_accepts_the_bound_host(monkeypatch, lm, capsys):
    port = free_port("0.0.0.0")
    given = serve_with(monkeypatch, lm, ["--host", "0.0.0.0", "--port", str(port), "--allow-remote"])
    out = capsys.readouterr()
    assert given.host == "0.0.0.0" and given.port == port
    assert "warning" in out.err and "no authentication" in out.err
    http = TestClient(given.app, base_url=f"http://127.0.0.1:{port}")
    assert http.get("/api/model", headers={"host": f"0.0.0.0:{port}"}).status_code == 200
    assert http.get("/api/model", headers={"host": f"evil.example:{port}"}).status_code == 400


def test_default_serve_is_loopback_and_names_docs(monkeypatch, lm, capsys):
    port = free_port()
    given = serve_with(monkeypatch, lm, ["--port", str(port)])
    out = capsys.readouterr()
    assert given.host == "127.0.0.1" and "warning" not in out.err + out.out
    assert f"http://127.0.0.1:{port}/" in out.out and "/docs" in out.out and "/openapi.json" in out.out


def test_serve_help_names_allow_remote():
    from openmav.cli import serve

    text = serve.build_parser().format_help()
    assert "--allow-remote" in text and "127.0.0.1" in text


# ---- errors as the schema says ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [("GET", "/api/jobs/999"), ("POST", "/api/jobs/999/cancel"),
                                          ("GET", "/api/jobs/999/events"), ("GET", "/api/jobs/-3")])
def test_unknown_jobs_answer_404(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert "no job" in r.json()["detail"]


def test_validation_errors_have_a_string_detail_as_declared(client):
    r = client.post("/api/attention", json={"prompt": IOI, "heads": [{"layer": -1, "head": 0}]})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    schema = client.get("/openapi.json").json()
    declared = schema["paths"]["/api/attention"]["post"]["responses"]["422"]["content"]["application/json"]
    assert declared["schema"]["$ref"].endswith("/ErrorResponse")
    assert schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    events = schema["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]
    assert list(events["200"]["content"]) == ["text/event-stream"]
    assert list(events["404"]["content"]) == ["application/json"]


SURROGATE_BODIES = [
    ("/api/tokenize", b'{"prompt": "John\\ud800"}'),
    ("/api/attention", b'{"prompt": "\\udfff", "heads": []}'),
    ("/api/predict", b'{"prompt": "a \\ud83d b"}'),
    ("/api/evaluations", b'{"prompt": "\\ud800"}'),
    ("/api/studies", b'{"prompt": "x\\udc00", "mode": "generic"}'),
    ("/api/circuit", b'{"prompt": "When Mary and John", "corrupt_prompt": "When John and \\ud800", "token_a": 1, '
                     b'"token_b": 2}'),
]


@pytest.mark.parametrize("path, body", SURROGATE_BODIES)
def test_lone_surrogate_answers_422_with_a_message(client, path, body):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "lone surrogate" in detail and "not valid Unicode" in detail
    assert client.get("/api/model").status_code == 200


def test_a_body_that_is_not_utf8_answers_400(client):
    r = client.post("/api/predict", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["detail"], str)


def test_surrogate_pair_escapes_are_fine(client):
    r = client.post("/api/tokenize", content=b'{"prompt": "cat \\ud83d\\ude00"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, body", [
    ("/api/predict", b'{"prompt": "abc", "ablations": [{"layer": 0, "head": 0, "kind": "scale", "factor": 1e300}]}'),
    ("/api/predict", b'{"prompt": "abc", "ablations": [{"layer": 0, "head": 0, "kind": "scale", "factor": NaN}]}'),
    ("/api/evaluations", b'{"prompt": "abc", "kind": "scale", "factor": -Infinity}'),
    ("/api/studies", b'{"prompt": "abc", "kind": "sparsify", "threshold": Infinity}'),
    ("/api/predict", b'{"prompt": "abc", "token_id": true}'),  # strict: a boolean is no token id
    ("/api/attention", b'{"prompt": "abc", "heads": [{"layer": "0", "head": 0}]}'),
])
def test_out_of_range_and_non_finite_numbers_answer_422(client, path, body):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text


def test_job_queue_close_cancels_and_stops_the_worker():
    from openmav.web.jobs import JobQueue, ModelGate

    jobs, ran = JobQueue(ModelGate(), max_jobs=3), []

    def slow(job):
        while not job.cancel.wait(0.01):
            pass
        ran.append(job.id)

    first, second = jobs.submit("test", {}, slow), jobs.submit("test", {}, slow)
    while first.status == "queued":
        time.sleep(0.01)
    jobs.close(timeout=10)
    assert not jobs._worker.is_alive()
    assert first.status == "cancelled" and second.status == "cancelled" and ran == [first.id]


# ---- the whole API against its own OpenAPI schema -----------------------------------------------------------------
# generated requests per operation and mode: about 550 in all, a few seconds on a tiny model;
# MAV_SCHEMATHESIS_EXAMPLES=500 searches longer
EXAMPLES = int(os.environ.get("MAV_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_schema(lm):
    schemathesis = pytest.importorskip("schemathesis")
    app = create_app(lm, max_prompt_tokens=24, max_jobs=8)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    jobs = app.state.jobs  # the jobs it started: cancelled, and finished before the model goes away
    for job in list(jobs.jobs.values()):
        jobs.cancel(job)
    deadline = time.monotonic() + 60
    while jobs.active() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_answer_matches_the_openapi_schema(api_schema, mode):
    """Schemathesis, in process on loopback names: 0 server errors and 0 undeclared status codes, content types,
    headers or bodies, for valid (positive) and invalid (negative: each must be refused with a 4xx) requests."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode, checks

    checks.load_all_checks()
    run_checks = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                  checks.response_headers_conformance, checks.response_schema_conformance,
                  checks.negative_data_rejection]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        inputs = (operation.path_parameters, operation.query, operation.headers, operation.cookies, operation.body)
        if mode == "negative" and not any(len(part) for part in inputs):
            continue  # nothing to send wrong

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def call(case):
            case.call_and_validate(base_url=f"http://127.0.0.1:{PORT}", checks=run_checks)

        call()


# ---- /docs offline, and no HTML from data ---------------------------------------------------------------------------
def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"https?://", page.text), "the docs page must not load anything from the network"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/docs/assets/") for r in refs)
    for ref in refs:
        assert client.get(ref).status_code == 200
    assert "'/openapi.json'" in page.text and '"validatorUrl": null' in page.text
    assert client.get("/redoc").status_code == 404  # its script would come from a CDN


def test_page_never_writes_html_from_data():
    """Token text, labels and errors reach the page as text nodes (textContent), never as markup."""
    sources = {p.name: p.read_text() for p in Path(str(STATIC)).glob("*.js")}
    assert sources
    for name, text in sources.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser",
                     "createContextualFragment", "eval(", "new Function"):
            assert sink not in text, f"{name} uses {sink}"
    assert 'else if (k === "text") node.textContent = v;' in sources["app.js"]
