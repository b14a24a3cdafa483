"""The scan folder: ``manifest.json``, one file per committed shard, and the Parquet tables at the end.

::

    DIR/manifest.json        model and weights fingerprint, data fingerprint, settings, openmav version,
                             shards and their state, and "complete" once the tables are written
    DIR/shards/NNNNNN.npz    a shard's partial results (:func:`save_shard`), written to a temporary
                             name and renamed, then recorded in the manifest
    DIR/units.parquet        one row per unit: statistics, histogram, head scores
    DIR/top_contexts.parquet one row per top-k hit: value, document, character span, context
    DIR/documents.parquet    one row per scanned document
    DIR/vocab.parquet        the text of every token id that appears in the contexts

Every file is written through :func:`openmav.capture.trace.replacing` (temporary name, then rename), so
a scan killed at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .merge import BlockTree, TopK

MANIFEST = "manifest.json"
FORMAT = 1


def shard_path(folder: Path, index: int) -> Path:
    return folder / "shards" / f"{index:06d}.npz"


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / MANIFEST} cannot be read ({exc}): not a scan folder, or damaged; "
                         "pass --force to start again") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    from ..capture.trace import replacing

    with replacing(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


# --- shard files -----------------------------------------------------------------------------------------------


def _pack(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Many small arrays as one flat buffer per dtype, and an index ``name -> [dtype, offset, shape]`` (a shard holds
    thousands of small arrays; a zip member each would cost more to read than the numbers themselves)."""
    buffers: dict[str, list] = {}
    index = {}
    sizes: dict[str, int] = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        key = value.dtype.str
        index[name] = [key, sizes.get(key, 0), list(value.shape)]
        buffers.setdefault(key, []).append(value.reshape(-1))
        sizes[key] = sizes.get(key, 0) + value.size
    return {f"buf{k}": np.concatenate(v) for k, v in buffers.items()}, index


def _unpack(data, index: dict) -> dict[str, np.ndarray]:
    flat = {k: data[f"buf{k}"] for k in {v[0] for v in index.values()}}
    out = {}
    for name, (key, offset, shape) in index.items():
        size = int(np.prod(shape)) if shape else 1
        value = flat[key][offset:offset + size].reshape(shape)
        out[name] = value[()] if not shape else value
    return out


def save_shard(path: Path, tree: BlockTree, topk: dict[str, TopK], windows: dict, info: dict) -> None:
    """One shard's partial results: its tree nodes, its top-k lists and the token windows they point into."""
    arrays: dict[str, np.ndarray] = {}
    for (level, index), node in tree.nodes.items():
        for group, fields in node.items():
            for name, value in fields.items():
                arrays[f"tree|{level}|{index}|{group}|{name}"] = np.asarray(value)
    for group, top in topk.items():
        arrays[f"topk|{group}|values"] = top.values
        arrays[f"topk|{group}|keys"] = top.keys
        for name, value in top.extra.items():
            arrays[f"topk|{group}|extra|{name}"] = value
    for name, value in windows.items():
        arrays[f"win|{name}"] = value
    buffers, index = _pack(arrays)
    header = {**info, "index": index}
    from ..capture.trace import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, info=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **buffers)


def load_shard(path: Path) -> tuple[BlockTree, dict[str, TopK], dict, dict]:
    """``(tree, topk, windows, info)`` of a shard file (raises ``OSError``/``ValueError`` when damaged)."""
    tree = BlockTree()
    nodes: dict = {}
    tops: dict = {}
    windows: dict = {}
    with np.load(path, allow_pickle=False) as data:
        info = json.loads(bytes(data["info"]).decode())
        arrays = _unpack(data, info.pop("index"))
    for key, value in arrays.items():
        parts = key.split("|")
        if parts[0] == "tree":
            _, level, index, group, name = parts
            nodes.setdefault((int(level), int(index)), {}).setdefault(group, {})[name] = value
        elif parts[0] == "topk":
            entry = tops.setdefault(parts[1], {"extra": {}})
            if parts[2] == "extra":
                entry["extra"][parts[3]] = value
            else:
                entry[parts[2]] = value
        elif parts[0] == "win":
            windows[parts[1]] = value
    tree.nodes = nodes
    topk = {g: TopK.from_arrays(e["values"], e["keys"], e["extra"]) for g, e in tops.items()}
    return tree, topk, windows, info


def shard_ok(path: Path, digest: str) -> bool:
    """Whether a committed shard file is whole and holds the shard whose windows hash to ``digest``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["info"]).decode()).get("digest") == digest
    except (OSError, ValueError, KeyError):
        return False


def remove_stale(folder: Path) -> None:
    """Temporary files a killed scan left (``.name.*.partial.ext``) in the folder and its shards."""
    for where in (folder, folder / "shards"):
        if where.is_dir():
            for tmp in where.glob(".*.partial.*"):
                try:
                    tmp.unlink()
                except OSError:
                    pass


def ensure_folder(folder: Path) -> None:
    try:
        (folder / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the scan folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write the scan folder {folder}: permission denied")
