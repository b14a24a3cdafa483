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

Saving never leaves a half-written file: the archive is written under a temporary
name beside the target and renamed onto it (:func:`replacing`), so an interrupted
save (Ctrl-C, a full disk) leaves any earlier file at that path as it was.  The
temporary (``.NAME.XXXXXXXX.partial.EXT``) is removed on every exit path that runs
code, and one left by a killed process is removed by the next save into that folder
(:mod:`openmav.capture.tempfiles`).
Loading checks everything it reads: a missing, empty, truncated or foreign file is
one :class:`~openmav.errors.InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import tempfiles
from .records import StepRecord
from .tokens import TokenText

FORMAT, VERSION = "openmav-trace", 1
ARRAYS = ("logits", "top_ids", "top_probs", "top_logits", "attn_norms", "mlp_norms", "mlp_max_abs",
          "residual_norms", "attention", "attention_entropy", "lens_ids", "lens_probs", "prompt_attention")
REQUIRED = ARRAYS[:8]  # StepRecord has no default for these
NDIM = {"attention": 3, "attention_entropy": 2, "lens_ids": 2, "lens_probs": 2, "prompt_attention": 4}
LAYER_ARRAYS = ("attn_norms", "mlp_norms", "mlp_max_abs", "residual_norms", "attention", "attention_entropy",
                "lens_ids", "lens_probs", "prompt_attention")


def _jsonable(extra: dict) -> dict:
    out = {}
    for key, value in (extra or {}).items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The temporary names :func:`replacing` makes: ``.NAME.`` + mkstemp's 8 characters + ``.partial`` + suffix.
PARTIAL = re.compile(r"\..+\.[a-z0-9_]{8}\.partial(\.[^./]*)?")


@contextmanager
def replacing(path, sweep: bool = True):
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` when the block ends.

    If the block raises (or is interrupted, or the process is asked to stop), the temporary
    file is removed and whatever was at ``path`` before is left untouched.  The new file gets
    the usual permissions (``0o666`` less the umask).  With ``sweep``, temporaries that a killed
    process left in the folder are removed first (:func:`openmav.capture.tempfiles.sweep`).
    """
    path = Path(path)
    if sweep:
        tempfiles.sweep(path.parent, PARTIAL)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tempfiles.hold(tmp)
    done = False
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        done = True
    finally:
        tempfiles.release(tmp, remove=not done)


def _header_and_arrays(records: list[StepRecord], meta: dict | None) -> dict[str, np.ndarray]:
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
    try:
        text = json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in the prompt or a token text
        raise InputError(f"cannot save a trace holding text that is not valid UTF-8 ({exc.reason})") from None
    arrays["__meta__"] = np.frombuffer(text, dtype=np.uint8)
    return arrays


def save_trace(path, records: list[StepRecord], meta: dict | None = None, compress: bool = True,
               overwrite: bool = True) -> Path:
    """Write ``records`` (one run, in order) and ``meta`` to ``path`` (``.npz``); returns the path.

    The file is written beside ``path`` and renamed onto it, so an interrupted save
    leaves an earlier file intact.  ``overwrite=False`` refuses to replace an existing
    file.  Missing parent folders are created.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"cannot save the trace to {path}: it is a directory")
    if not overwrite and path.exists():
        raise InputError(f"{path} already exists: not replacing it")
    arrays = _header_and_arrays(records, meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            with open(tmp, "wb") as fh:
                (np.savez_compressed if compress else np.savez)(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        raise InputError(f"could not save the trace to {path}: {exc.strerror or exc}") from exc
    return path


class _Foreign(Exception):
    """The file is not an openmav trace at all."""


class _Damaged(Exception):
    """An openmav trace whose content is malformed or inconsistent."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Damaged(what)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_arrays(step: int, arrays: dict[str, np.ndarray], n_top_texts: int, lens_ids) -> None:
    for name in REQUIRED:
        _need(name in arrays, f"step {step} has no {name}")
    for name, a in arrays.items():
        _need(a.dtype.kind in "biuf", f"step {step}: {name} is not numeric ({a.dtype})")
        _need(a.ndim == NDIM.get(name, 1), f"step {step}: {name} has {a.ndim} dimensions, not {NDIM.get(name, 1)}")
    vocab = arrays["logits"].shape[0]
    _need(vocab > 0, f"step {step}: logits is empty")
    k = arrays["top_ids"].shape[0]
    _need(arrays["top_probs"].shape[0] == k and arrays["top_logits"].shape[0] == k and n_top_texts == k,
          f"step {step}: top_ids, top_probs, top_logits and their texts differ in length")
    _need(k == 0 or (arrays["top_ids"].min() >= 0 and arrays["top_ids"].max() < vocab),
          f"step {step}: top_ids lie outside the vocabulary")
    layers = {arrays[n].shape[0] for n in LAYER_ARRAYS if n in arrays}
    _need(len(layers) == 1 and 0 not in layers, f"step {step}: the per-layer arrays disagree on the number of layers")
    if "attention" in arrays and "attention_entropy" in arrays:
        _need(arrays["attention"].shape[:2] == arrays["attention_entropy"].shape,
              f"step {step}: attention and attention_entropy differ in shape")
    if "lens_ids" in arrays or "lens_probs" in arrays or lens_ids is not None:
        shape = [len(lens_ids), len(lens_ids[0]) if lens_ids else 0] if lens_ids is not None else None
        _need("lens_ids" in arrays and "lens_probs" in arrays and
              arrays["lens_ids"].shape == arrays["lens_probs"].shape and list(arrays["lens_ids"].shape) == shape,
              f"step {step}: the logit lens arrays and token ids do not match")


def _text_triple(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(isinstance(x, str) for x in v)


def _records(header, data, path: Path) -> tuple[dict, list[StepRecord]]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Foreign("its header does not say openmav-trace")
    version = header.get("version", 0)
    _need(_is_int(version), "its version is not a number")
    if version > VERSION:
        raise InputError(f"{path} is a trace of format version {version}; this openmav reads {VERSION}")
    meta, tokens, seq, steps = (header.get(k) for k in ("meta", "tokens", "sequence", "records"))
    _need(isinstance(meta, dict), "its meta is not a JSON object")
    _need(isinstance(meta.get("prompt", ""), str), "its prompt is not text")
    panels = meta.get("selected_panels")
    _need(panels is None or (isinstance(panels, list) and all(isinstance(p, str) for p in panels)),
          "its selected_panels is not a list of names")
    _need(isinstance(tokens, dict) and all(_text_triple(v) for v in tokens.values()), "its token table is malformed")
    table = {}
    for key, value in tokens.items():
        _need(re.fullmatch(r"-?[0-9]{1,19}", key) is not None, f"token id {key!r} is not a number")
        table[int(key)] = TokenText(int(key), *value)

    def known(i) -> bool:
        return _is_int(i) and i in table

    _need(isinstance(seq, list) and all(known(i) for i in seq), "its token sequence is malformed")
    sequence = [table[i] for i in seq]
    _need(isinstance(steps, list), "its step list is malformed")
    records = []
    for n, s in enumerate(steps):
        _need(isinstance(s, dict), f"step entry {n} is not a JSON object")
        step = s.get("step")
        _need(_is_int(step) and step >= 0, f"step entry {n} has no valid step number")
        _need(_is_int(s.get("position")) and 0 <= s["position"] < max(len(sequence), 1),
              f"step {step}: its position lies outside the token sequence")
        _need(_is_int(s.get("prompt_length")) and s["prompt_length"] >= 0, f"step {step}: bad prompt_length")
        _need(known(s.get("token")), f"step {step}: its token is not in the token table")
        _need(_is_num(s.get("chosen_prob")), f"step {step}: chosen_prob is not a number")
        _need(_is_num(s.get("elapsed_ms")) and 0 <= s["elapsed_ms"] <= 86_400_000, f"step {step}: bad elapsed_ms")
        _need(isinstance(s.get("generated_text"), str), f"step {step}: generated_text is not text")
        _need(isinstance(s.get("sampled"), bool) and isinstance(s.get("finished"), bool), f"step {step}: bad flags")
        _need(isinstance(s.get("extra"), dict), f"step {step}: extra is not a JSON object")
        top = s.get("top_text_ids")
        _need(isinstance(top, list) and all(known(i) for i in top), f"step {step}: bad top_text_ids")
        lens = s.get("lens_token_ids")
        _need(lens is None or (isinstance(lens, list) and all(isinstance(r, list) and all(known(i) for i in r)
                                                               for r in lens)), f"step {step}: bad lens_token_ids")
        names = s.get("arrays")
        _need(isinstance(names, list) and all(isinstance(a, str) and a in ARRAYS for a in names),
              f"step {step}: bad array list")
        arrays = {}
        for name in names:
            key = f"s{step}.{name}"
            _need(key in data.files, f"the array {key} is missing")
            arrays[name] = data[key]
        _check_arrays(step, arrays, len(top), lens)
        records.append(StepRecord(
            step=step, position=s["position"], token=table[s["token"]], chosen_prob=s["chosen_prob"],
            context=tuple(sequence[: s["position"] + 1]), prompt_length=s["prompt_length"],
            generated_text=s["generated_text"], top_texts=tuple(table[i] for i in top),
            lens_tokens=None if lens is None else tuple(tuple(table[i] for i in row) for row in lens),
            sampled=s["sampled"], finished=s["finished"], elapsed_ms=s["elapsed_ms"], extra=s["extra"],
            **{name: arrays.get(name) for name in ARRAYS},
        ))
    return meta, records


def load_trace(path) -> tuple[dict, list[StepRecord]]:
    """``(meta, records)`` from a file written by :func:`save_trace`.

    Anything wrong with the file (missing, a directory, empty, not an ``.npz``
    archive, truncated, another program's archive, a malformed or inconsistent
    header or array) is an :class:`InputError` that names the file and the problem.
    """
    from ..rules import check_input_file

    path = check_input_file(path, "trace file")
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"PK":
                raise _Foreign("not an .npz archive")
        with np.load(path, allow_pickle=False) as data:
            if "__meta__" not in data.files:
                raise _Foreign("the archive has no __meta__ entry")
            try:
                raw = data["__meta__"]
            except ValueError:  # an object array: would need pickle
                raise _Foreign("its __meta__ entry is not text") from None
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise _Foreign("its __meta__ entry is not text")
            try:
                header = json.loads(bytes(raw).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise _Foreign("its header is not valid JSON") from None
            return _records(header, data, path)
    except _Foreign as exc:
        raise InputError(f"{path} is not an openmav trace file ({exc})") from None
    except _Damaged as exc:
        raise InputError(f"{path} is a damaged openmav trace ({exc})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{path} is a truncated or damaged .npz archive ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:  # e.g. pickled or bad arrays
        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is a damaged openmav trace ({first})") from None
