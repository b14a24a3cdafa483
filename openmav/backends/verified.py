"""Remembered verdicts of the load-time verification, so a model is verified once per model and library version.

Verifying a row (:mod:`openmav.backends.verify`) costs several forwards; its verdict depends
only on what :func:`verdict_key` hashes: the model's class and full config, the row tried
(declared, or the one inferred), the dtype, the device type, the attention implementation,
where the weights came from (the weight files' names, sizes and modification times), and the versions of torch, transformers and openmav together with the
source of the modules that decide a verdict.  A change in any of them verifies again.

Verdicts live beside the model cache (``cache_dir()/verified/<key>.json``), written to a
temporary name and renamed under a :mod:`filelock` lock, as cache entries are.  Only
passing verdicts are kept; a file that cannot be read is ignored (and verification runs).
``load_model(..., reverify=True)`` and ``--verify`` skip the lookup and write a fresh verdict.
A model object passed to :func:`~openmav.backends.loading.wrap_model` is always verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from .adapters import FamilyAdapter
from .sources import cache_dir

VERSION = 2  # the record's layout and what a verdict means (2: shares pushed at their own size, the stream end to end)
# the modules whose code decides a verdict: a change in any of them (a new check) verifies again
_DECIDERS = ("adapters.py", "parts.py", "infer.py", "refusals.py", "probe.py", "verify.py", "find.py")


def verified_dir() -> Path:
    return cache_dir() / "verified"


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    import torch
    import transformers

    from .. import __version__

    digest = hashlib.sha256(f"{torch.__version__}|{transformers.__version__}|{__version__}".encode())
    here = Path(__file__).resolve().parent
    for name in _DECIDERS + ("../capture/fast_attention.py", "../capture/cached_forward.py",
                             "../capture/hooks.py"):
        try:
            digest.update((here / name).read_bytes())
        except OSError:
            digest.update(name.encode())
    return digest.hexdigest()


def _weights_fingerprint(location: str | None) -> str:
    """A folder's weight and config files by name, size and modification time (a converted cache entry's
    files never change once renamed into place); a hub id by its name."""
    if not location or not os.path.isdir(location):
        return f"id:{location}"
    stamps = []
    for name in sorted(os.listdir(location)):
        if name.endswith((".safetensors", ".bin", ".pt", ".json")):
            try:
                st = os.stat(os.path.join(location, name))
            except OSError:
                continue
            stamps.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "files:" + hashlib.sha256("|".join(stamps).encode()).hexdigest()


def verdict_key(model, location: str | None) -> str:
    """The hash of everything a verdict on ``model`` depends on (see the module docstring)."""
    config = model.config
    try:
        config_text = config.to_json_string(use_diff=False)
    except Exception:  # noqa: BLE001 - a config that cannot be written: its repr stands in
        config_text = repr(config)
    param = next(model.parameters(), None)
    parts = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": config_text,
        "dtype": str(getattr(param, "dtype", None)),
        "device": getattr(getattr(param, "device", None), "type", None),
        "attn": getattr(config, "_attn_implementation", None),
        "device_map": sorted(map(str, (getattr(model, "hf_device_map", None) or {}).values())),
        "weights": _weights_fingerprint(location),
        "code": _code_fingerprint(),
        "layout": VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _row_from(data: dict) -> FamilyAdapter:
    fields = {f.name for f in dataclasses.fields(FamilyAdapter)}

    def frozen(v):
        return tuple(frozen(x) for x in v) if isinstance(v, list) else v

    row = {k: frozen(v) for k, v in data.items() if k in fields}
    return FamilyAdapter(**row)


def recall(key: str) -> dict | None:
    """``{"row": FamilyAdapter, "inferred", "cached_steps", "rows_function"}`` of a kept verdict, or ``None``."""
    try:
        data = json.loads((verified_dir() / f"{key}.json").read_text(encoding="utf-8"))
        if data.get("layout") != VERSION or data.get("key") != key:
            return None
        return {"row": _row_from(data["row"]), "inferred": bool(data["inferred"]),
                "cached_steps": bool(data["cached_steps"]), "rows_function": bool(data["rows_function"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, row: FamilyAdapter, parts) -> None:
    """Keep a passing verdict (write-then-rename under the folder's lock); a failure to write is not an error."""
    from filelock import FileLock, Timeout

    folder = verified_dir()
    record = {"layout": VERSION, "key": key, "row": dataclasses.asdict(row), "inferred": bool(parts.inferred),
              "cached_steps": bool(parts.cached_steps), "rows_function": bool(parts.rows_function)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock"), timeout=10):
            tmp = folder / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, folder / f"{key}.json")
    except (OSError, Timeout):
        pass  # a read-only or busy cache: the next load verifies again
