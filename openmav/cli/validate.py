"""Every command-line value checked in one place, before anything heavy is imported or loaded.

:data:`TABLE` says, for each command (``mav``, ``mav maps``, ``mav compare``, ``mav serve``,
``mav replay``), which rule each parsed flag must pass: numbers must be finite and in
range (a seed must fit what ``torch.manual_seed`` takes), panel names must exist, text
must be valid UTF-8, paths must make sense.  :func:`openmav.cli.main` runs
:func:`check_args` right after parsing, so a bad value costs milliseconds, never
imports torch and never waits for a model; the error is one line
(:class:`~openmav.errors.InputError`).

The rules are plain objects, so the Python API uses the same ones:
``SAMPLING["temp"].check("temperature", value)``.  This module imports nothing
beyond the standard library and :mod:`openmav.errors`.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
from pathlib import Path

from ..errors import InputError

SEED_MAX = 2**64 - 1  # torch.manual_seed takes -2**63 .. 2**64-1; we take the non-negative part
INT_MAX = 2**31 - 1
DTYPES = ("float32", "float16", "bfloat16")
DEVICE = re.compile(r"^(auto|(cpu|cuda|mps)(:\d+)?)$", re.IGNORECASE)


def flag_name(dest: str) -> str:
    """``max_new_tokens`` -> ``--max-new-tokens`` (positional ``file`` stays ``FILE``)."""
    return "FILE" if dest == "file" else "--" + dest.replace("_", "-")


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
            if self.hi is None:
                return f"at least {self.lo}"
            return f"at least {self.lo} and at most {self.hi}"
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
            shown = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else repr(value)
            raise InputError(f"{flag} must be {self.describe()}{why}, got {shown}")
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
    """Panel names, space- or comma-separated, or ``all`` alone (as the panel registry reads them)."""

    def check(self, flag, value, args=None):
        from .live import PANEL_NAMES

        names = []
        for item in value or []:
            check_text(flag, item)
            names.extend(n.strip() for n in str(item).split(",") if n.strip())
        if not names:
            raise InputError(f"{flag} names no panel: valid panels are all, {', '.join(PANEL_NAMES)}")
        if names == ["all"]:
            return value
        unknown = [n for n in names if n not in PANEL_NAMES]
        if unknown:
            raise InputError(f"unknown panel {', '.join(map(repr, unknown))}: valid panels are "
                             f"{', '.join(PANEL_NAMES)} (or all, alone)")
        return value


class ModelName(Rule):
    """A model that names a file or folder must exist (hub ids and bundled names are checked at load)."""

    def check(self, flag, value, args=None):
        if not value:
            return value
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
    "temp": Number(float, 0.0),
    "top_k": Number(int, 0, INT_MAX),
    "top_p": Number(float, 0.0, 1.0, lo_open=True),
    "min_p": Number(float, 0.0, 1.0),
    "repetition_penalty": Number(float, 0.0, lo_open=True),
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
    "selected_panels": Panels(),
}

TABLE: dict[str, dict[str, Rule]] = {
    "mav": {
        **MODEL, **SAMPLING, **VIEW,
        "prompt": Text(allow_empty=False),
        "max_new_tokens": MAX_NEW_TOKENS,
        "record": OutputFile("force"),
    },
    "mav maps": {
        **MODEL, **SAMPLING,
        "prompt": Text(allow_empty=False),
        "output_dir": OutputDir(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "window": Number(int, 1, 1_000_000),
        "stride": Number(int, 1, 1_000_000),
        "head": Number(int, 0, 100_000),
        "workers": Number(int, 0, 1024),
    },
    "mav compare": {
        **MODEL,
        "prompt1": Text(allow_empty=False),
        "prompt2": Text(allow_empty=False),
        "prompts": Text(allow_empty=False),
        "output_dir": OutputDir(),
        "layer": Number(int, -100_000, 100_000),
        "top_k": Number(int, 1, 100_000),
    },
    "mav serve": {
        **MODEL,
        "host": Text(),  # "" means every interface: serve itself decides whether that is allowed
        "port": Number(int, 1, 65535),
        "max_prompt_tokens": Number(int, 1, 1_000_000),
        "max_jobs": Number(int, 1, 1000),
    },
    "mav replay": {
        **VIEW,
        "file": TraceFile(),
        "delay": Number(float, 0.0, 86_400.0),
    },
}


def add_loading_flags(group) -> None:
    """``--device-map``, ``--offload-folder``, ``--load-in-8bit``, ``--load-in-4bit`` (shared by the commands)."""
    group.add_argument("--device-map", default=None, metavar="MAP",
                       help="split a model bigger than one device with accelerate: auto, balanced, "
                            "balanced_low_0 or sequential (layers may go to the CPU or, with --offload-folder, "
                            "to disk)")
    group.add_argument("--offload-folder", default=None, metavar="DIR", help="where --device-map puts layers "
                                                                              "offloaded to disk")
    group.add_argument("--load-in-8bit", action="store_true", help="load 8-bit through bitsandbytes (CUDA only)")
    group.add_argument("--load-in-4bit", action="store_true", help="load 4-bit through bitsandbytes (CUDA only)")


def loading_kwargs(args) -> dict:
    """``load_model`` keyword arguments from the loading flags."""
    quantization = "8bit" if getattr(args, "load_in_8bit", False) else \
        "4bit" if getattr(args, "load_in_4bit", False) else None
    return {"device_map": getattr(args, "device_map", None), "offload_folder": getattr(args, "offload_folder", None),
            "quantization": quantization}


def check_args(command: str, args) -> None:
    """Check every parsed value of ``command`` that :data:`TABLE` has a rule for (``None``: unset)."""
    for dest, rule in TABLE.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                rule.check(flag_name(dest), value, args)
            except OSError as exc:  # a path the system refuses outright, e.g. a name too long
                raise InputError(f"{flag_name(dest)} {value}: {exc.strerror or exc}") from None


def check_sampling(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None) -> None:
    """The sampling rules of :data:`TABLE`, for the Python API (names as the API spells them)."""
    for label, key, value in (("temperature", "temp", temperature), ("top_k", "top_k", top_k),
                              ("top_p", "top_p", top_p), ("min_p", "min_p", min_p),
                              ("repetition_penalty", "repetition_penalty", repetition_penalty),
                              ("seed", "seed", seed)):
        if value is not None:
            SAMPLING[key].check(label, value)
