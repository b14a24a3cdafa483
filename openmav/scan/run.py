"""``scan(...)``: read a corpus through a model and write what every neuron and head does across it.

The steps: check every argument and the data (before any model loads); open or create the scan folder
(an existing scan is resumed only with ``resume``, replaced only with ``force``); load the model and
check the layers and the context against it; stream the corpus into batches and shards
(:mod:`openmav.scan.windows`); run each shard not yet committed, in this process or on Ray
(:mod:`openmav.scan.runner`), each shard's partial results written to its own file and then recorded in
the manifest; merge every shard exactly (:mod:`openmav.scan.merge`) and write the tables
(:mod:`openmav.scan.tables`).  The manifest marks the scan complete last.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import InputError
from ..rules import Number, check_text
from .data import open_corpus
from .merge import BlockTree, TopK
from .plan import AFTER, BEFORE, EDGES, Plan
from .store import (FORMAT, ensure_folder, load_shard, read_manifest, remove_stale, save_shard, shard_ok,
                    shard_path, write_manifest)

UNITS = ("neurons", "heads")
CPU_BATCH_TOKENS = 2048  # tokens per forward on a CPU (bigger batches gain nothing there)
GPU_BATCH_TOKENS = 16384
SHARD_BATCHES = 16


@dataclass(frozen=True)
class Settings:
    """Everything that decides a scan's numbers (a resumed scan must have the same)."""

    layers: tuple[int, ...]
    units: tuple[str, ...]
    context: int
    top_k: int
    batch_size: int
    max_tokens: int | None
    text_field: str
    context_radius: tuple[int, int] = (BEFORE, AFTER)
    bins: int = len(EDGES) + 1


def parse_layers(layers) -> tuple[int, ...] | None:
    """``None``/``"all"`` -> every layer; ``"0,3-5"`` or a list of ints -> those (checked against the model later)."""
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("", "all")):
        return None
    out: list[int] = []
    if isinstance(layers, str):
        for part in layers.split(","):
            part = part.strip()
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                               part[1:].split("-", 1)[1])
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise InputError(f"--layers: {part!r} is not a layer number or a range like 3-5 "
                                 "(give e.g. all, 0,2 or 4-7)") from None
    else:
        try:
            items = list(layers)
        except TypeError:
            raise InputError(f"layers must be 'all', a string like '0,3-5' or a list of layer numbers, got "
                             f"{layers!r}") from None
        for item in items:
            Number(int, -100_000, 100_000).check("layers", item)
            out.append(int(item))
    if not out:
        raise InputError("--layers names no layer")
    return tuple(sorted(set(out)))


def parse_units(units) -> tuple[str, ...]:
    names = [u.strip() for u in units.split(",")] if isinstance(units, str) else list(units or [])
    names = [n for n in names if n]
    bad = [n for n in names if n not in UNITS]
    if not names or bad:
        raise InputError(f"--units: {', '.join(map(repr, bad)) or 'nothing'} is not a unit kind: use neurons, heads "
                         "or neurons,heads")
    return tuple(u for u in UNITS if u in names)


def default_batch_size(context: int, device_type: str) -> int:
    """Windows per forward: a fixed number of tokens per batch (what GEMMs need to run at full speed), within
    the memory a batch's largest activations take (a quarter of the RAM the system reports free)."""
    target = GPU_BATCH_TOKENS if device_type == "cuda" else CPU_BATCH_TOKENS
    batch = max(1, target // context)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        per_window = context * 4 * 64 * 1024  # ~64k floats per token of transient activations
        batch = max(1, min(batch, int(free // 4 // per_window)))
    except (ValueError, OSError, AttributeError):
        pass
    return batch


def _weights_fingerprint(lm) -> str:
    location = lm.extra.get("location") if isinstance(lm.extra, dict) else None
    h = hashlib.sha256(f"{type(lm.model).__name__}|{lm.name}|{lm.source}".encode())
    if location and os.path.isdir(location):
        for name in sorted(os.listdir(location)):
            if name.endswith((".safetensors", ".bin", ".json")):
                st = os.stat(os.path.join(location, name))
                h.update(f"|{name}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:  # a model object: its weights themselves (read once)
        import torch

        with torch.no_grad():
            for name, param in sorted(lm.model.state_dict().items()):
                h.update(name.encode())
                h.update(param.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _check_folder(out: Path, resume: bool, force: bool) -> dict | None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    manifest = read_manifest(out) if out.is_dir() else None
    if out.is_dir() and manifest is None and any(out.iterdir()):
        raise InputError(f"--out {out} is a folder that holds other files, not a scan: choose a new or empty folder")
    if manifest is not None and manifest.get("format") != FORMAT:
        raise InputError(f"{out} holds a scan of another format ({manifest.get('format')}): pass --force to start "
                         "again")
    if manifest is not None and not resume and not force:
        state = "a complete scan" if manifest.get("complete") else "an unfinished scan"
        raise InputError(f"{out} already holds {state}: pass --resume to continue it or --force to replace it")
    if resume and force:
        raise InputError("--resume and --force exclude each other: continue the scan, or replace it")
    return manifest if resume else None


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old["model"]["weights"] != new["model"]["weights"] or old["model"]["name"] != new["model"]["name"]:
        out.append(f"the model ({old['model']['name']} then, {new['model']['name']} now)")
    if old["data"]["fingerprint"] != new["data"]["fingerprint"]:
        out.append(f"the data ({old['data']['path']} then, {new['data']['path']} now, or its files changed)")
    for key, value in new["settings"].items():
        if old["settings"].get(key) != value:
            out.append(f"{key} ({old['settings'].get(key)} then, {value} now)")
    return out


class ShardWorker:
    """Runs shards on one loaded model (built in each Ray actor, or once in this process)."""

    def __init__(self, lm, plan: Plan):
        from .reduce import Reader

        self.reader = Reader(lm, plan)
        self.plan = plan

    def run(self, shard) -> dict:
        tree = BlockTree()
        self.reader.topk = {g: TopK(t.values.shape[0], t.k, {"context": ((t.extra["context"].shape[2],),
                                                                          np.float16)})
                            for g, t in self.reader.topk.items()}
        for batch in shard.batches:
            tree.add_batch(batch.index, self.reader.run(batch))
        return {"tree": tree, "topk": self.reader.topk}


def _windows_of(shard) -> dict:
    ids, meta, lengths = [], [], []
    for b in shard.batches:
        for w in range(b.ids.shape[0]):
            ids.append(b.ids[w])
            meta.append(b.meta[w])
            lengths.append(b.ids.shape[1])
    width = max(lengths)
    pad = [np.pad(x, (0, width - len(x))) for x in ids]
    padm = [np.pad(x, ((0, width - len(x)), (0, 0))) for x in meta]
    return {"ids": np.stack(pad).astype(np.int32), "meta": np.stack(padm).astype(np.int64),
            "lengths": np.array(lengths, np.int32), "first": np.array([shard.batches[0].first_window], np.int64)}


def _load_worker(spec: dict):
    """A worker in a Ray actor: the model loaded by name there (the parts verified as on the driver)."""
    from ..backends.loading import load_model

    lm = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"])
    return ShardWorker(lm, Plan(**spec["plan"]))


def scan(model=None, data=None, out=None, *, layers="all", units=("neurons", "heads"), context: int = 128,
         top_k: int = 20, batch_size: int | None = None, max_tokens: int | None = None, text_field: str = "text",
         ray: bool | str | None = None, ray_workers: int | None = None, resume: bool = False, force: bool = False,
         device: str | None = "auto", dtype: str = "float32", device_map=None, offload_folder: str | None = None,
         quantization: str | None = None, reverify: bool = False, tokenizer=None, shard_batches: int | None = None,
         progress: Callable[[dict], None] | None = None):
    """Scan ``data`` through ``model`` into the folder ``out`` and return the :class:`~openmav.scan.query.Scan`.

    ``model``: a name (bundled, ``.gguf``, folder, hub id), a :class:`~openmav.backends.loading.LoadedModel`,
    or a model object with ``tokenizer``.  ``data``: a ``.txt`` (one document a line), ``.jsonl``/``.parquet``
    (the ``text_field``), a folder of ``.txt``/``.md``/``.py`` files or a saved ``datasets`` dataset.
    ``layers``: ``"all"``, ``"0,3-5"`` or a list; ``units``: ``neurons``, ``heads`` or both; ``context``:
    tokens per window; ``top_k``: hits kept per unit; ``batch_size``: windows per forward (default: from
    :func:`default_batch_size`); ``max_tokens``: stop after that many tokens.  ``ray``: ``True`` starts a local
    Ray cluster, a string joins the cluster at that address.  ``resume`` continues a killed scan (refused, in
    one line naming what differs, when the model, the data or a setting is not the same); ``force``
    replaces an existing scan.  ``device``/``dtype``/``device_map``/``offload_folder``/``quantization``/``reverify``
    load a model given by name, as :func:`~openmav.backends.loading.load_model` does.  ``progress`` receives one dict per event (``start``, ``shard``, ``merge``,
    ``done``).
    """
    from .query import Scan

    if data is None or out is None:
        raise InputError("a scan needs data (a corpus) and out (the scan folder)")
    for label, flag in (("resume", resume), ("force", force)):
        if not isinstance(flag, bool):
            raise InputError(f"{label} must be True or False, got {flag!r}")
    Number(int, 2, 1_000_000).check("context", context)
    Number(int, 1, 100_000).check("top_k", top_k)
    if batch_size is not None:
        Number(int, 1, 1_000_000).check("batch_size", batch_size)
    if max_tokens is not None:
        Number(int, 1, 10**15).check("max_tokens", max_tokens)
    if shard_batches is not None:
        Number(int, 1, 1_000_000).check("shard_batches", shard_batches)
    if ray_workers is not None:
        Number(int, 1, 10_000).check("ray_workers", ray_workers)
    check_text("text_field", text_field, allow_empty=False)
    wanted_layers = parse_layers(layers)
    kinds = parse_units(units)
    if ray not in (None, False, True):
        check_text("ray", ray, allow_empty=False)
    if ray:
        from .runner import require_ray

        require_ray()
        if not isinstance(model, (str, type(None))):
            raise InputError("a scan on Ray loads the model in every worker: give it by name (bundled, .gguf, a "
                             "folder or a hub id), not as an object")
    corpus = open_corpus(data, text_field)
    folder = Path(out).expanduser()
    previous = _check_folder(folder, resume, force)

    lm = _load(model, tokenizer, device, dtype, device_map, offload_folder, quantization, reverify)
    n_layers = lm.parts.n_layers
    chosen = tuple(range(n_layers)) if wanted_layers is None else wanted_layers
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise InputError(f"--layers: {', '.join(map(str, bad))} out of range: {lm.name} has layers 0 to {n_layers - 1}")
    limit = lm.context_length
    if limit is not None and context > limit:
        raise InputError(f"--context {context} is longer than {lm.name}'s context of {limit} tokens")
    if "neurons" in kinds and all(lm.parts.down_proj[i] is None for i in chosen):
        raise InputError(f"{lm.name} exposes no per-neuron MLP input in the chosen layers (its adapter names no "
                         "down projection; a mixture of experts keeps its neurons per expert): scan --units heads")
    if batch_size is None and previous is not None:
        batch_size = previous["settings"]["batch_size"]
    settings = Settings(chosen, kinds, context, top_k, batch_size or default_batch_size(context, lm.device.type),
                        max_tokens, text_field)
    moe = [i for i in chosen if lm.parts.down_proj[i] is None]
    manifest = {
        "format": FORMAT, "openmav": __version__, "complete": False,
        "model": {"name": lm.name, "class": type(lm.model).__name__, "weights": _weights_fingerprint(lm),
                  "n_layers": n_layers, "n_heads": lm.parts.n_heads, "dtype": str(next(lm.model.parameters()).dtype)},
        "data": {"path": str(corpus.path), "kind": corpus.kind, "fingerprint": corpus.fingerprint},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "shard_batches": (previous or {}).get("shard_batches") or shard_batches or SHARD_BATCHES,
        "notes": [f"layers {', '.join(map(str, moe))}: no per-neuron MLP input (no down projection named, or a "
                  "mixture of experts), so no neurons there"] if moe and "neurons" in kinds else [],
        "shards": {},
    }
    if previous is not None:
        differ = _differences(previous, manifest)
        if differ:
            raise InputError(f"--resume: the scan in {folder} differs in {'; '.join(differ)}: use the same "
                             "model, data and settings, or --force to start again")
        manifest["shards"] = previous.get("shards", {})
    elif force and folder.is_dir():
        shutil.rmtree(folder / "shards", ignore_errors=True)
        for name in ("manifest.json", "units.parquet", "top_contexts.parquet", "documents.parquet", "vocab.parquet"):
            (folder / name).unlink(missing_ok=True)
    ensure_folder(folder)
    remove_stale(folder)
    write_manifest(folder, manifest)
    plan = Plan(layers=chosen, units=kinds, top_k=top_k, context=context)
    _run_shards(lm, plan, settings, corpus, folder, manifest, ray, ray_workers, model, device, dtype, progress)
    return Scan(folder)


def _load(model, tokenizer, device, dtype, device_map, offload_folder, quantization, reverify=False):
    from ..backends.loading import LoadedModel, load_model, wrap_model

    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, str):
        if model is not None:
            check_text("model", model, allow_empty=False)
        return load_model(model, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                          quantization=quantization, reverify=reverify)
    return wrap_model(model, tokenizer)


def _run_shards(lm, plan, settings, corpus, folder, manifest, ray, ray_workers, model, device, dtype, progress):
    from ..capture.tokens import TokenTexts
    from .runner import LocalRunner, RayRunner
    from .tables import DocumentWriter, hit_rows, unit_rows, vocab_rows, _write
    from .windows import batches, shards

    emit = progress or (lambda event: None)
    done = manifest["shards"]
    stats = {"tokens": 0, "computed_tokens": 0, "shards": 0, "start": time.perf_counter(), "chars": 0}
    total_bytes = sum(p.stat().st_size for p in corpus.files)
    emit({"event": "start", "model": lm.name, "data": str(corpus.path), "bytes": total_bytes,
          "max_tokens": settings.max_tokens, "batch_size": settings.batch_size, "layers": len(plan.layers),
          "resumed_shards": len(done)})

    def todo(stream):
        for shard in stream:
            digest = shard.digest()
            entry = done.get(str(shard.index))
            if entry is not None:
                if entry.get("digest") != digest:
                    raise InputError(f"--resume: shard {shard.index} of the corpus no longer holds the windows it "
                                     "held (the data changed): use --force to start again")
                if shard_ok(shard_path(folder, shard.index), digest):
                    stats["tokens"] += shard.tokens
                    stats["shards"] += 1
                    continue
            shard.digest_value = digest
            yield shard

    if ray:
        spec = {"model": model, "device": "cpu" if device in (None, "auto") else device, "dtype": dtype,
                "plan": asdict(plan)}
        import torch

        gpus = 1.0 if torch.cuda.is_available() and str(device or "auto").startswith(("auto", "cuda")) else 0.0
        if gpus:
            spec["device"] = "cuda"
        runner = RayRunner(lambda: _load_worker(spec), None if ray is True else ray, ray_workers,
                           gpus_per_worker=gpus, env={"OMP_NUM_THREADS": "1"})
    else:
        runner = LocalRunner(lambda: ShardWorker(lm, plan))
    try:
        with DocumentWriter(folder / "documents.parquet") as docs:
            def on_document(record):
                docs.add(record)
                stats["chars"] += record.chars

            stream = shards(batches(lm.tokenizer, corpus.documents(), settings.context, settings.batch_size,
                                    settings.max_tokens, on_document), manifest["shard_batches"])
            for shard, result in runner.run(todo(stream)):
                save_shard(shard_path(folder, shard.index), result["tree"], result["topk"], _windows_of(shard),
                           {"digest": shard.digest_value, "index": shard.index, "tokens": shard.tokens})
                done[str(shard.index)] = {"state": "done", "digest": shard.digest_value, "tokens": shard.tokens,
                                          "batches": [shard.batches[0].index, shard.batches[-1].index]}
                write_manifest(folder, manifest)
                stats["tokens"] += shard.tokens
                stats["computed_tokens"] += shard.tokens
                stats["shards"] += 1
                elapsed = time.perf_counter() - stats["start"]
                emit({"event": "shard", "shard": shard.index, "shards_done": stats["shards"],
                      "tokens": stats["tokens"], "chars": stats["chars"], "bytes": total_bytes,
                      "tokens_per_s": stats["computed_tokens"] / elapsed if elapsed > 0 else 0.0})
    finally:
        runner.close()
    if not done:
        raise InputError(f"{corpus.path} gave no tokens to scan (every document is empty)")
    emit({"event": "merge", "shards": len(done)})
    tree, topk = BlockTree(), {}
    order = sorted(done, key=int)
    for index in order:
        t, k, _, _ = load_shard(shard_path(folder, int(index)))
        tree.merge(t)
        for group, top in k.items():
            if group in topk:
                topk[group].merge(top)
            else:
                topk[group] = top
    total = tree.total()
    texts = TokenTexts(lm.tokenizer)

    def shard_windows():
        for index in order:
            _, _, win, _ = load_shard(shard_path(folder, int(index)))
            yield int(win["first"][0]), win["ids"], win["meta"], win["lengths"]

    hits, seen = hit_rows(topk, settings.context, shard_windows, lambda i: texts.get(i).text)
    _write(unit_rows(total), folder / "units.parquet")
    _write(hits, folder / "top_contexts.parquet")
    _write(vocab_rows(seen, lambda i: texts.get(i).text), folder / "vocab.parquet")
    manifest["complete"] = True
    manifest["tokens"] = stats["tokens"]
    manifest["documents"] = stats.get("documents")
    write_manifest(folder, manifest)
    elapsed = time.perf_counter() - stats["start"]
    emit({"event": "done", "tokens": stats["tokens"], "seconds": elapsed, "out": str(folder),
          "tokens_per_s": stats["computed_tokens"] / elapsed if elapsed > 0 else 0.0})
