"""``mav serve``: the web explorer on a local port (127.0.0.1 unless asked otherwise).

The API has no authentication, so any host that is not loopback (0.0.0.0, "", an
interface's address or name) is refused unless ``--allow-remote`` is given, and then
with a warning.  The host is checked before torch or the model loads, and so is each
``--scan DIR`` (a finished corpus scan of the served model, shown in the page's Neurons and
Heads tabs).
"""

from __future__ import annotations

import argparse
import socket
import sys

from ..errors import InputError
from ..web.hosts import is_loopback


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the web explorer: attention heads, head ablation, studies "
                                            "and circuit discovery for one model, loaded once.  The page is at "
                                            "http://HOST:PORT/, the API's schema at /openapi.json and its docs "
                                            "at /docs.")
    p.add_argument("--model", default=None, help="bundled name (smollm2-135m, gemma3-270m), .gguf path, "
                                                 "model directory or hub id (default: the bundled default)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any address that is not "
                        "loopback needs --allow-remote")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach (e.g. 0.0.0.0); the API has no authentication, "
                        "so anyone who reaches it can run the model")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default auto)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (default float32)")
    from .validate import add_loading_flags

    add_loading_flags(p)
    p.add_argument("--max-prompt-tokens", type=int, default=128, help="longest prompt accepted (default 128)")
    p.add_argument("--max-jobs", type=int, default=4, help="studies/circuits queued or running at once (default 4)")
    p.add_argument("--scan", action="append", default=[], metavar="DIR",
                   help="a finished corpus scan of the served model (mav scan --out DIR) for the page's Neurons "
                        "and Heads tabs; repeatable")
    return p


def _check_host(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise InputError(f"--host {host!r} is not loopback: other machines could use the model through an API "
                         "without authentication; keep the default 127.0.0.1, or pass --allow-remote to accept that")


def _check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise InputError(f"port {port} is out of range: use 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port") from exc


def _check_scans(folders, model: str | None) -> list[str]:
    """Each ``--scan`` folder's manifest read (plain JSON, so no torch yet): a finished scan, made with the
    model to be served (by name); one line naming what is wrong, or the model it was made with."""
    if not folders:
        return []
    import json
    from pathlib import Path

    if model is None:
        from ..backends.sources import default_model_name

        model = default_model_name()
    for folder in folders:
        path = Path(folder).expanduser() / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"--scan {folder} is not a scan folder (no manifest.json): make one with mav scan") \
                from None
        except (OSError, ValueError) as exc:
            raise InputError(f"--scan {folder}: cannot read its manifest.json ({exc}): not a scan folder, "
                             "or damaged") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
            raise InputError(f"--scan {folder}: its manifest.json is not a scan's manifest")
        if not manifest.get("complete"):
            raise InputError(f"--scan {folder}: the scan is not finished: continue it with mav scan --resume")
        made = manifest["model"].get("name")
        if made != model:
            raise InputError(f"--scan {folder} was made with {made}, not {model}: serve it with --model {made}")
    return list(folders)


def run(args) -> int:
    _check_host(args.host, args.allow_remote)  # before torch: a refused host fails at once
    if args.max_prompt_tokens < 1 or args.max_jobs < 1:
        raise InputError("--max-prompt-tokens and --max-jobs must be >= 1")
    _check_port(args.host, args.port)
    scans = _check_scans(args.scan, args.model)  # before the model loads
    remote = not is_loopback(args.host)
    if remote:
        print(f"warning: --allow-remote: listening on {args.host or 'every interface'}:{args.port}; the API has "
              "no authentication: anyone who can reach this address can run the model", file=sys.stderr, flush=True)

    from ..backends.loading import load_model
    from ..web.app import create_app
    from ..web.server import serve

    from .validate import loading_kwargs

    lm = load_model(args.model, device=args.device, dtype=args.dtype, progress=lambda msg: print(msg, flush=True),
                    **loading_kwargs(args))
    app = create_app(lm, max_prompt_tokens=args.max_prompt_tokens, max_jobs=args.max_jobs, hosts=[args.host],
                     scans=scans)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    docs = "API docs at /docs, schema at /openapi.json" if app.state.docs else "API schema at /openapi.json"
    print(f"OpenMAV explorer for {lm.name}: http://{shown}:{args.port}/  ({docs}; Ctrl+C stops)", flush=True)
    serve(app, args.host, args.port)  # uvicorn, with deadlines for slow or silent connections
    return 0
