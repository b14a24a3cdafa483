"""The input rules: one object per kind of value, shared by the command line and the Python API.

Numbers must be finite and in range (a seed must fit what ``torch.manual_seed`` takes),
text must be valid UTF-8, paths must make sense; a failed rule raises one line
(:class:`~openmav.errors.InputError`).  The command line's table of which flag passes
which rule is :data:`openmav.cli.validate.TABLE`; the Python API calls the same objects,
e.g. ``SAMPLING["temp"].check("temperature", value)``.

This module sits at the bottom of the package's layers: it imports nothing beyond the
standard library and :mod:`openmav.errors` (torch only inside :class:`Quantized`, to ask
for CUDA), so anything may use it and checking costs milliseconds.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
from pathlib import Path

from .errors import InputError

SEED_MAX = 2**64 - 1  # torch.manual_seed takes -2**63 .. 2**64-1; we take the non-negative part
INT_MAX = 2**31 - 1
DTYPES = ("float32", "float16", "bfloat16")
DEVICE = re.compile(r"^(auto|(cpu|cuda|mps)(:\d+)?)$", re.IGNORECASE)


def flag_name(dest: str) -> str:
    """``max_new_tokens`` -> ``--max-new-tokens`` (positional ``file`` stays ``FILE``)."""
    return "FILE" if dest == "file" else "--" + dest.replace("_", "-")


def shown(value, limit: int = 60) -> str:
    """``value`` as an error message shows it: a real number as written, anything else as a short ``repr``
    (a type name for a tensor or an array, so a message never prints their contents)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)):
        dtype = str(getattr(value, "dtype", "")).replace("torch.", "")
        return f"a {type(value).__name__} of shape {list(shape)}" + (f" ({dtype})" if dtype else "")
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


class Rule:
    """One check; ``check(flag, value, args)`` raises :class:`InputError` or returns the value."""

    def check(self, flag: str, value, args=None):  # pragma: no cover - interface
        raise NotImplementedError


class Number(Rule):
    """A whole number (``kind=int``) or a finite float in ``[lo, hi]`` (ends open when asked)."""

    def __init__(self, kind: type, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
                 why: str = ""):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open, self.why = kind, lo, hi, lo_open, hi_open, why

    def describe(self) -> str:
        if self.kind is int:
            if self.lo is None:
                return "a whole number" if self.hi is None else f"at most {self.hi}"
            if self.hi is None:
                return f"at least {self.lo}"
            return f"at least {self.lo} and at most {self.hi}"
        if self.lo is None:
            return "a finite number" if self.hi is None else f"a finite number <= {self.hi:g}"
        if self.hi is None:
            return f"a finite number {'>' if self.lo_open else '>='} {self.lo:g}"
        return (f"a number in {'(' if self.lo_open else '['}{self.lo:g}, "
                f"{self.hi:g}{')' if self.hi_open else ']'}")

    def ok(self, value) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def check(self, flag, value, args=None):
        if not self.ok(value):
            why = f" ({self.why})" if self.why else ""
            what = self.describe()
            if self.kind is int and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                what = "a whole number" + ("" if what == "a whole number" else f" {what}")
            raise InputError(f"{flag} must be {what}{why}, got {shown(value)}")
        return value


def utf8_problem(text: str) -> str | None:
    """What makes ``text`` not valid UTF-8 (a lone surrogate, as argv decoding gives for bad
    bytes), or ``None`` when it is fine."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        ch = ord(text[exc.start])
        if 0xDC80 <= ch <= 0xDCFF:  # surrogateescape: an undecodable byte
            return f"byte 0x{ch - 0xDC00:02x} at character {exc.start} is not UTF-8"
        return f"character {exc.start} is a lone surrogate (U+{ch:04X})"


def check_text(label: str, text, *, allow_empty: bool = True) -> str:
    """``text`` itself if it is a ``str`` of valid UTF-8 (and not blank unless ``allow_empty``)."""
    if not isinstance(text, str):
        raise InputError(f"{label} must be text, got {type(text).__name__}")
    problem = utf8_problem(text)
    if problem:
        raise InputError(f"{label} is not valid UTF-8 text ({problem}): pass it as UTF-8")
    if not allow_empty and not text.strip():
        raise InputError(f"{label} is empty: give some text")
    return text


class Text(Rule):
    """Valid UTF-8 text; ``allow_empty=False`` also refuses blank text."""

    def __init__(self, allow_empty: bool = True):
        self.allow_empty = allow_empty

    def check(self, flag, value, args=None):
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            label = f"{flag}: prompt {i}" if isinstance(value, (list, tuple)) else flag
            check_text(label, item, allow_empty=self.allow_empty)
        return value


class Device(Rule):
    def check(self, flag, value, args=None):
        check_text(flag, value)
        if not DEVICE.match(value):
            raise InputError(f"unknown device {value!r}: use cpu, cuda, cuda:N, mps or auto")
        return value


class Dtype(Rule):
    def check(self, flag, value, args=None):
        if value not in DTYPES:
            raise InputError(f"unknown dtype {value!r}: use one of {', '.join(DTYPES)}")
        return value


class Panels(Rule):
    """Panel names, space- or comma-separated, or ``all`` alone, out of ``names`` (the panel registry's,
    which the caller passes in: this module sits below the views and imports none of them)."""

    def __init__(self, names):
        self.names = tuple(names)

    def check(self, flag, value, args=None):
        names = []
        for item in value or []:
            check_text(flag, item)
            names.extend(n.strip() for n in str(item).split(",") if n.strip())
        if not names:
            raise InputError(f"{flag} names no panel: valid panels are all, {', '.join(self.names)}")
        if names == ["all"]:
            return value
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise InputError(f"unknown panel {', '.join(map(repr, unknown))}: valid panels are "
                             f"{', '.join(self.names)} (or all, alone)")
        return value


def check_model_name(flag: str, value) -> str:
    """A model name is text that names something: ``""`` or blank is refused (``None`` means the default)."""
    check_text(flag, value)
    if not value.strip():
        raise InputError(f"{flag} is empty: name a model (a bundled name such as smollm2-135m, a .gguf file, a "
                         f"model folder or a hub id), or leave it out for the default model")
    return value


class ModelName(Rule):
    """A model that names a file or folder must exist (hub ids and bundled names are checked at load)."""

    def check(self, flag, value, args=None):
        if value is None:
            return value
        check_model_name(flag, value)
        path = Path(value).expanduser()
        if value.lower().endswith(".gguf"):
            if path.is_dir() or not path.exists():
                raise InputError(f"GGUF file not found: {value}")
            return value
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise InputError(f"{flag} {value}: the folder has no config.json, so it is not a transformers model")
            return value
        if value.startswith((".", "/", "~")) or value.count("/") > 1:
            what = "is a file, not a model folder or .gguf" if path.exists() else "no such file or directory"
            raise InputError(f"{flag} {value}: {what}")
        return value


def _probe_folder(folder: Path) -> str | None:
    """Why a new file cannot be written in ``folder`` (probed with a temporary file), else ``None``."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mav-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.remove(name)
    return None


def check_output_file(path, force: bool = False, flag: str = "--record") -> Path:
    """Refuse, before any work, a file we could not write or would overwrite without ``force``.

    The file must not be a directory; its folder must exist and take a new file; an
    existing file is replaced only with ``force`` (and then by renaming, never in place).
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{flag} needs a file name")
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputError(f"cannot write {flag} {path}: it is a directory; give a file name")
    folder = target.absolute().parent
    if not folder.exists():
        raise InputError(f"cannot write {flag} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"cannot write {flag} {path}: {folder} is a file, not a folder")
    if target.exists() and not force:
        raise InputError(f"{path} already exists: pass --force to replace it, or choose another name")
    problem = _probe_folder(folder)
    if problem:
        raise InputError(f"cannot write {flag} {path}: the folder {folder} does not take new files ({problem})")
    return target


class OutputFile(Rule):
    """A file the command will write; ``force_dest`` names the flag that allows replacing one."""

    def __init__(self, force_dest: str = "force"):
        self.force_dest = force_dest

    def check(self, flag, value, args=None):
        check_output_file(value, bool(getattr(args, self.force_dest, False)), flag)
        return value


def check_output_dir(path, flag: str = "--output-dir") -> Path:
    """A folder that exists (or can be made) and takes new files; nothing is created here."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{flag} is empty")
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{flag} {path} exists and is not a directory")
    probe = target.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot write to {flag} {path}: {probe} is a file, not a folder")
    problem = _probe_folder(probe)
    if problem:
        raise InputError(f"cannot write to {flag} {path}: {probe} does not take new files ({problem})")
    return target


class OutputDir(Rule):
    def check(self, flag, value, args=None):
        check_output_dir(value, flag)
        return value


def check_input_file(path, what: str = "file") -> Path:
    """An existing, readable, non-empty regular file, else one line naming it and what is wrong."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"no {what} given")
    target = Path(path).expanduser()
    try:
        if not target.exists():
            raise InputError(f"no {what} at {path}")
        if target.is_dir():
            raise InputError(f"{path} is a directory, not a {what}")
        if not target.is_file():
            raise InputError(f"{path} is not a regular file, so not a {what}")
        size = target.stat().st_size
        with open(target, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes), not a {what}")
    return target


class TraceFile(Rule):
    """A file ``mav replay`` can open: exists, readable, not empty, a zip (``.npz``) archive.

    Its content is checked by :func:`openmav.capture.trace.load_trace`."""

    def check(self, flag, value, args=None):
        target = check_input_file(value, "trace file")
        with open(target, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] != b"PK":
            raise InputError(f"{value} is not an openmav trace file (not an .npz archive)")
        return value


# Shared rules -------------------------------------------------------------------------------------

SEED = Number(int, 0, SEED_MAX, why="what torch.manual_seed accepts")
SAMPLING = {
    "temp": Number(float, 0.0, why="0 is greedy"),
    "top_k": Number(int, 0, INT_MAX, why="0 turns top-k off"),
    "top_p": Number(float, 0.0, 1.0, lo_open=True, why="1 turns top-p off"),
    "min_p": Number(float, 0.0, 1.0, why="0 turns min-p off"),
    "repetition_penalty": Number(float, 0.0, lo_open=True, why="1 turns the repetition penalty off"),
    "seed": SEED,
}
MAX_NEW_TOKENS = Number(int, 1, 1_000_000)


class DeviceMap(Rule):
    """``--device-map``: one of accelerate's strategies (a dict of module -> device is for the Python API)."""

    NAMES = ("auto", "balanced", "balanced_low_0", "sequential")

    def check(self, flag, value, args=None):
        check_text(flag, value)
        if value not in self.NAMES:
            raise InputError(f"unknown {flag} {value!r}: use {', '.join(self.NAMES)}")
        device = getattr(args, "device", None)
        if device not in (None, "auto"):
            raise InputError(f"--device {device} and {flag} {value} exclude each other: the map places every layer "
                             "(leave --device at auto)")
        return value


class OffloadFolder(Rule):
    """``--offload-folder``: goes with ``--device-map``; a folder that exists or can be made, and takes files."""

    def check(self, flag, value, args=None):
        check_text(flag, value)
        if getattr(args, "device_map", None) is None:
            raise InputError(f"{flag} goes with --device-map (it holds the layers the map sends to disk)")
        check_output_dir(value, flag)
        return value


class Quantized(Rule):
    """``--load-in-8bit`` / ``--load-in-4bit``: bitsandbytes and a CUDA device, checked before anything loads."""

    def check(self, flag, value, args=None):
        if not value:
            return value
        if args is not None and getattr(args, "load_in_8bit", False) and getattr(args, "load_in_4bit", False):
            raise InputError("--load-in-8bit and --load-in-4bit exclude each other: pick one")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise InputError(f"{flag} needs bitsandbytes and a CUDA device (bitsandbytes is not installed): drop "
                             f"{flag}, or use --dtype bfloat16 to halve memory instead")
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"{flag} needs a CUDA device (none is available): drop {flag}")
        return value


MODEL = {"model": ModelName(), "device": Device(), "dtype": Dtype(), "device_map": DeviceMap(),
         "offload_folder": OffloadFolder(), "load_in_8bit": Quantized(), "load_in_4bit": Quantized()}
VIEW = {
    "refresh_rate": Number(float, 0.0, why="0: no cap"),
    "limit_chars": Number(int, 1, 10_000_000),
    "max_bar_length": Number(int, 1, 10_000),
    "num_grid_rows": Number(int, 1, 100),
}


def check_sampling(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None) -> None:
    """The sampling rules (:data:`SAMPLING`), for the Python API (names as the API spells them)."""
    for label, key, value in (("temperature", "temp", temperature), ("top_k", "top_k", top_k),
                              ("top_p", "top_p", top_p), ("min_p", "min_p", min_p),
                              ("repetition_penalty", "repetition_penalty", repetition_penalty),
                              ("seed", "seed", seed)):
        if value is not None:
            SAMPLING[key].check(label, value)


# Rules the Python API adds: choices, flags, callbacks, indices, token ids, files to save -----------------

class Choice(Rule):
    """One of ``choices`` (text compared exactly)."""

    def __init__(self, choices):
        self.choices = tuple(choices)

    def check(self, flag, value, args=None):
        if not isinstance(value, str) or value not in self.choices:
            raise InputError(f"{flag} must be one of {', '.join(self.choices)}, got {shown(value)}")
        return value


class Flag(Rule):
    """``True`` or ``False`` (numpy's bool too): ``0``, ``1``, text and ``None`` are not flags."""

    def check(self, flag, value, args=None):
        if not (isinstance(value, bool) or type(value).__name__ == "bool_"):
            raise InputError(f"{flag} must be True or False, got {shown(value)}")
        return value


class Callback(Rule):
    """Something to call (``None`` when ``optional``)."""

    def __init__(self, optional: bool = True):
        self.optional = optional

    def check(self, flag, value, args=None):
        if value is None and self.optional:
            return value
        if not callable(value):
            raise InputError(f"{flag} must be a function to call{' or None' if self.optional else ''}, "
                             f"got {shown(value)}")
        return value


class Index(Rule):
    """An index into ``size`` things (``what``: "layer", "head"); ``from_end`` also takes ``-size..-1``.

    Nothing wraps: an index outside the range is refused, never reduced modulo the size."""

    def __init__(self, size: int, what: str, from_end: bool = False):
        self.size, self.what, self.from_end = int(size), what, from_end

    def check(self, flag, value, args=None):
        n = self.size
        lo = -n if self.from_end else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value < n:
            valid = f"0..{n - 1}" + (f" (or {-n}..-1 from the end)" if self.from_end else "") if n else "none"
            raise InputError(f"{flag} must be a {self.what} index: valid {self.what}s are {valid}, got {shown(value)}")
        return value


class Cancel(Rule):
    """A ``threading.Event`` (anything with ``is_set()``), or ``None``."""

    def check(self, flag, value, args=None):
        if value is not None and not callable(getattr(value, "is_set", None)):
            raise InputError(f"{flag} must be a threading.Event (something with is_set()) or None, got {shown(value)}")
        return value


INTEGER_DTYPES = ("int64", "int32")  # what an embedding takes
_ALL_GOOD = object()  # what TokenIds finds when no entry of a list is a bad id


class TokenIds(Rule):
    """Token ids for a model with ``vocab`` ids and a context of ``context`` tokens (``None``: unknown).

    A ``torch.long`` (or other integer) tensor ``[1, P]``; ``one_d`` also takes ``[P]``, ``lists`` a Python
    list or tuple of ints (or one such row) and integer numpy arrays.  ``P >= 1``, ``P + reserve <= context``
    (``reserve``: the new tokens that will follow) and every id in ``0..vocab-1``.  Checked on the given
    object without copying it: the length comes first, so nothing is allocated for a sequence past the
    context, and a tensor is only reduced (``min``/``max``)."""

    def __init__(self, vocab: int | None, context: int | None = None, reserve: int = 0, *, lists: bool = False,
                 one_d: bool = False):
        self.vocab, self.context, self.reserve, self.lists, self.one_d = vocab, context, reserve, lists, one_d

    def _shape_rule(self) -> str:
        return "[1, P] or [P]" if self.one_d or self.lists else "[1, P]"

    def check(self, flag, value, args=None):
        if isinstance(value, (list, tuple)):
            if not self.lists:
                raise InputError(f"{flag} must be a tensor of token ids of shape [1, P] (torch.long), got a "
                                 f"{type(value).__name__}: torch.tensor([ids]) makes one")
            row = value[0] if len(value) == 1 and isinstance(value[0], (list, tuple)) else value
            self._length(flag, len(row))
            # the default is a fresh object, not None: ``[1, None]`` holds a bad id that is None
            bad = next((x for x in row if isinstance(x, bool) or not isinstance(x, numbers.Integral)), _ALL_GOOD)
            if bad is not _ALL_GOOD:
                raise InputError(f"{flag} must hold whole-number token ids, got {shown(bad)}")
            self._range(flag, min(row), max(row))
            return value
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if shape is None or dtype is None or isinstance(value, (str, bytes)) or \
                (type(value).__module__.split(".")[0] == "numpy" and not self.lists):
            raise InputError(f"{flag} must be a tensor of token ids of shape {self._shape_rule()} (torch.long), "
                             f"got {shown(value)}")
        kind = str(dtype).replace("torch.", "")
        if kind not in INTEGER_DTYPES:
            raise InputError(f"{flag} must hold integer token ids (torch.long), got dtype {kind}")
        shape = tuple(int(n) for n in shape)
        if not (len(shape) == 2 and shape[0] == 1) and not (len(shape) == 1 and (self.one_d or self.lists)):
            hint = ": add the batch dimension with ids.unsqueeze(0)" if len(shape) == 1 else \
                ": one sequence at a time" if len(shape) == 2 else ""
            raise InputError(f"{flag} must have shape {self._shape_rule()}, got shape {list(shape)}{hint}")
        self._length(flag, shape[-1])
        if getattr(value, "is_meta", False):
            raise InputError(f"{flag} is a tensor on the meta device, which holds no values: give real token ids")
        self._range(flag, int(value.min()), int(value.max()))
        return value

    def _length(self, flag, n: int) -> None:
        if n < 1:
            raise InputError(f"{flag} is empty: give at least one token id")
        if self.context and n + self.reserve > self.context:
            asked = f" and {self.reserve} new tokens were asked for" if self.reserve else ""
            raise InputError(f"{flag} is {n} tokens{asked}, but the model has a context of {self.context} tokens: "
                             f"valid lengths are 1..{self.context - self.reserve}")

    def _range(self, flag, lo: int, hi: int) -> None:
        if self.vocab is not None and (lo < 0 or hi >= self.vocab):
            raise InputError(f"{flag} holds the token id {lo if lo < 0 else hi}: valid token ids are "
                             f"0..{self.vocab - 1}")


def check_save_path(flag: str, path, suffixes=None) -> None:
    """A file a figure can be saved to, checked before drawing: text or a path, not a folder (nor ending in a
    separator), its suffix one of ``suffixes`` (when given, lower case with the dot; none means the
    default format), and a folder that exists or can be made and takes new files."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{flag} must be a file name (text or a path), got {shown(path)}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{flag} must be a file name, got {shown(path)}")
    check_text(flag, text)
    target = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise InputError(f"{flag} {text} is a folder: give a file name inside it (e.g. {Path(text) / 'figure.png'})")
    suffix = target.suffix.lower()
    if suffixes is not None and suffix and suffix not in suffixes:
        raise InputError(f"{flag} {text}: unknown format {suffix!r}; use one of {', '.join(sorted(suffixes))}")
    parent = target.parent
    try:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"cannot write {flag} {text}: {parent} is a file, not a folder")
        check_output_dir(parent, flag)
    except OSError as exc:  # a name the system refuses outright, e.g. too long
        raise InputError(f"cannot write {flag} {text}: {exc.strerror or exc}") from None


# How a head is ablated (the interventions and the web API) -------------------------------------------

MAX_FACTOR = 1000.0  # a larger scale overflows the logits of a float16 model (the web API's cap too)
ABLATION = {
    "kind": Choice(("zero", "mean", "scale", "permute", "sparsify")),
    "factor": Number(float, -MAX_FACTOR, MAX_FACTOR, why="a larger scale overflows float16 logits"),
    "threshold": Number(float, 0.0),
    "seed": SEED,
}
BATCH_SIZE = Number(int, 1, 4096)
