"""Trace files: every :class:`StepRecord` of a run in one ``.npz`` file (``mav --record``).

Format (version 1), an uncompressed-or-deflated NumPy ``.npz`` archive read with
``allow_pickle=False``:

- ``__meta__``: a ``uint8`` array holding UTF-8 JSON: ``{"format": "openmav-trace",
  "version": 1, "meta": {...run settings: model, prompt, sampling...}, "tokens":
  {id: [piece, text, display]}, "sequence": [ids of prompt + generated tokens],
  "records": [per-step scalars]}``.  Each per-step entry holds ``step``,
  ``position``, ``token``, ``chosen_prob``, ``prompt_length``, ``generated_text``,
  ``sampled``, ``finished``, ``elapsed_ms``, ``top_text_ids``, ``lens_token_ids``
  (or ``null``), ``extra`` (JSON-able items only) and ``arrays`` (the names below
  that the step has).
- ``s{step}.{field}`` for each array field: ``logits`` [V], ``top_ids``,
  ``top_probs``, ``top_logits`` [k], ``attn_norms``, ``mlp_norms``,
  ``mlp_max_abs``, ``residual_norms`` [L], ``attention`` [L,H,S],
  ``attention_entropy`` [L,H], ``lens_ids``/``lens_probs`` [L,k],
  ``prompt_attention`` [L,H,P,P]; dtypes as captured (float32, int64).

A record's ``context`` is the first ``position + 1`` tokens of ``sequence``.
Loading gives records equal to the saved ones, field for field.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from .records import StepRecord
from .tokens import TokenText

FORMAT, VERSION = "openmav-trace", 1
ARRAYS = ("logits", "top_ids", "top_probs", "top_logits", "attn_norms", "mlp_norms", "mlp_max_abs",
          "residual_norms", "attention", "attention_entropy", "lens_ids", "lens_probs", "prompt_attention")


def _jsonable(extra: dict) -> dict:
    out = {}
    for key, value in (extra or {}).items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out


def save_trace(path, records: list[StepRecord], meta: dict | None = None, compress: bool = True) -> Path:
    """Write ``records`` (one run, in order) and ``meta`` to ``path`` (``.npz``)."""
    path = Path(path)
    tokens: dict[int, TokenText] = {}
    arrays: dict[str, np.ndarray] = {}
    steps = []
    sequence: list[int] = []
    for rec in records:
        for t in (rec.token, *rec.context, *rec.top_texts, *(t for row in rec.lens_tokens or () for t in row)):
            tokens[t.id] = t
        sequence = [t.id for t in rec.context] + [rec.token.id]
        names = []
        for name in ARRAYS:
            value = getattr(rec, name)
            if value is not None:
                arrays[f"s{rec.step}.{name}"] = np.asarray(value)
                names.append(name)
        steps.append({
            "step": rec.step, "position": rec.position, "token": rec.token.id, "chosen_prob": rec.chosen_prob,
            "prompt_length": rec.prompt_length, "generated_text": rec.generated_text, "sampled": rec.sampled,
            "finished": rec.finished, "elapsed_ms": rec.elapsed_ms, "top_text_ids": [t.id for t in rec.top_texts],
            "lens_token_ids": None if rec.lens_tokens is None else [[t.id for t in row] for row in rec.lens_tokens],
            "extra": _jsonable(rec.extra), "arrays": names,
        })
    header = {"format": FORMAT, "version": VERSION, "meta": meta or {},
              "tokens": {str(i): [t.piece, t.text, t.display] for i, t in tokens.items()},
              "sequence": sequence, "records": steps}
    arrays["__meta__"] = np.frombuffer(json.dumps(header, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return path


def load_trace(path) -> tuple[dict, list[StepRecord]]:
    """``(meta, records)`` from a file written by :func:`save_trace`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no trace file at {path}")
    try:
        data = np.load(path, allow_pickle=False)
        header = json.loads(bytes(data["__meta__"]).decode("utf-8"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not an openmav trace file ({type(exc).__name__})") from exc
    if header.get("format") != FORMAT:
        raise InputError(f"{path} is not an openmav trace file")
    if header.get("version", 0) > VERSION:
        raise InputError(f"{path} is a trace of format version {header['version']}; this openmav reads {VERSION}")
    table = {int(i): TokenText(int(i), *v) for i, v in header["tokens"].items()}
    sequence = [table[i] for i in header["sequence"]]
    records = []
    for s in header["records"]:
        arrays = {name: data[f"s{s['step']}.{name}"] for name in s["arrays"]}
        lens = s["lens_token_ids"]
        records.append(StepRecord(
            step=s["step"], position=s["position"], token=table[s["token"]], chosen_prob=s["chosen_prob"],
            context=tuple(sequence[: s["position"] + 1]), prompt_length=s["prompt_length"],
            generated_text=s["generated_text"], top_texts=tuple(table[i] for i in s["top_text_ids"]),
            lens_tokens=None if lens is None else tuple(tuple(table[i] for i in row) for row in lens),
            sampled=s["sampled"], finished=s["finished"], elapsed_ms=s["elapsed_ms"], extra=s["extra"],
            **{name: arrays.get(name) for name in ARRAYS},
        ))
    return header["meta"], records

