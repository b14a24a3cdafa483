"""``mav maps`` from options to files: check, load, generate, write sidecar, page and images.

Everything a user can get wrong is checked before the first file is written: the
output directory (writable, not holding an earlier run's maps unless ``overwrite``),
window and stride, the head index, the prompt's length against the context, and
whether 8-bit loading is possible here.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ..capture import SamplingConfig, tempfiles
from ..errors import InputError
from .windows import check_window

SIDECAR, PAGE = "maps.json", "maps.html"
REDUCTIONS = ("max", "mean", "head")


@dataclass
class MapsOptions:
    model: str | None
    prompt: str
    output_dir: str
    max_new_tokens: int = 20
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    device: str = "auto"
    dtype: str = "float32"
    chat: bool = False
    window: int = 32
    stride: int = 5
    reduce: str = "max"
    head: int | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    device_map: str | None = None
    reverify: bool = False  # --verify: check the parts again even where a verdict is remembered
    offload_folder: str | None = None
    workers: int = 0
    overwrite: bool = False


@dataclass
class MapsResult:
    output_dir: str
    images: list[str]
    sidecar: str
    page: str
    n_generated: int
    generation_seconds: float
    writing_seconds: float


def check_options(o: MapsOptions) -> None:
    """The checks that need no model."""
    check_window(o.window, o.stride)
    if o.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {o.max_new_tokens}")
    if o.reduce not in REDUCTIONS:
        raise InputError(f"--reduce must be one of {', '.join(REDUCTIONS)}, got {o.reduce!r}")
    if o.reduce == "head" and o.head is None:
        raise InputError("--reduce head needs --head N (the query head to show)")
    if o.head is not None and o.reduce != "head":
        raise InputError(f"--head {o.head} goes with --reduce head, not --reduce {o.reduce}")
    if o.workers < 0:
        raise InputError(f"--workers must be 0 (no pool) or more, got {o.workers}")
    o.sampling.validate()
    check_output_dir(o.output_dir, o.overwrite)
    from ..backends.loading import placement_kwargs

    placement_kwargs(o.device, o.device_map, o.offload_folder, _quantization(o))


def _quantization(o: MapsOptions) -> str | None:
    return "8bit" if o.load_in_8bit else "4bit" if o.load_in_4bit else None


def check_output_dir(path: str, overwrite: bool) -> None:
    """The directory must be creatable and writable (probed, then left as found); earlier maps are kept."""
    if not path:
        raise InputError("--output-dir is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--output-dir {path} exists and is not a directory")
    if os.path.isdir(path) and not overwrite:
        old = [n for n in os.listdir(path) if n in (SIDECAR, PAGE) or (n.startswith("attn_") and n.endswith(".png"))]
        if old:
            raise InputError(f"{path} already holds maps ({len(old)} files, e.g. {sorted(old)[0]}): "
                             "pass --overwrite or choose another --output-dir")
    created = []
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    try:
        os.makedirs(path, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".mav-probe-", dir=path)
        os.close(fd)
        os.remove(name)
    except OSError as exc:
        raise InputError(f"cannot write to --output-dir {path}: {exc.strerror or exc}") from None
    finally:
        for d in created:  # leave no empty directories behind: they are made again when writing
            try:
                os.rmdir(d)
            except OSError:
                pass


def check_chat(o: MapsOptions) -> None:
    """``--chat`` with a model whose tokenizer files carry no chat template is refused before the model loads
    (read from the tokenizer config alone; where the files cannot tell, :func:`encode` checks after loading)."""
    if o.chat:
        from ..backends.sources import has_chat_template, resolve_source

        if has_chat_template(o.model) is False:
            raise InputError(f"--chat: {resolve_source(o.model).name}'s tokenizer has no chat template; drop --chat")


def load(o: MapsOptions, progress=None):
    """Load the model: on a device, split by a device map, or quantized (bitsandbytes, CUDA).

    ``progress`` receives short status lines; transformers' own bars are off either way.
    """
    from ..backends.loading import load_model

    return load_model(o.model, device=o.device, dtype=o.dtype, device_map=o.device_map,
                      offload_folder=o.offload_folder, quantization=_quantization(o),
                      reverify=o.reverify, progress=progress or (lambda message: None))


#: What a killed run may leave in the output folder: this version's temporaries (``.maps.json.XXXXXXXX.partial.json``,
#: ``.attn_0_1.png.XXXXXXXX.partial.png``), older versions' (``maps.json.part``, ``attn_0_1.png.part``) and the
#: writability probe of :func:`check_output_dir`.
LEFTOVERS = re.compile(r"\..+\.[a-z0-9_]{8}\.partial(\.[^./]*)?|(maps\.json|maps\.html|attn_[0-9_]+\.png)\.part"
                       r"|\.mav-probe-[a-z0-9_]{8}")


def write_error(exc: OSError, output_dir: str) -> InputError:
    """One line for a write that failed: a folder that became unwritable, a full disk."""
    what = os.path.basename(exc.filename) if getattr(exc, "filename", None) else "the maps"
    return InputError(f"could not write {what} to {output_dir}: {exc.strerror or exc} "
                      "(files written before it are complete; nothing half-written is left)")


def check_model(o: MapsOptions, lm) -> None:
    """The checks that need the model: window against the context, head index."""
    check_window(o.window, o.stride, lm.context_length)
    if not lm.parts.has_attention:
        raise InputError(f"{lm.name} has no attention layers: attention maps need attention (the live view `mav` "
                         "shows its logit lens and residual stream)")
    n = lm.parts.n_heads
    if o.head is not None and not 0 <= o.head < n:
        raise InputError(f"--head {o.head} is out of range: {lm.name} has {n} query heads (0..{n - 1})")


def encode(o: MapsOptions, lm):
    """Prompt ids ``[1, P]``, wrapped in the chat template with ``chat``; checked against the context."""
    from ..capture.step_loop import encode_prompt

    if not o.chat:
        return encode_prompt(lm, o.prompt, o.max_new_tokens)
    if not o.prompt or not o.prompt.strip():
        raise InputError("the prompt is empty: give some text to continue")
    if not getattr(lm.tokenizer, "chat_template", None):
        raise InputError(f"--chat: {lm.name}'s tokenizer has no chat template; drop --chat")
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": o.prompt}], tokenize=False,
                                            add_generation_prompt=True)
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    ctx = lm.context_length
    if ctx and ids.shape[1] + o.max_new_tokens > ctx:
        raise InputError(f"the chat prompt is {ids.shape[1]} tokens and {o.max_new_tokens} new tokens were "
                         f"asked for, but {lm.name} has a context of {ctx} tokens")
    return ids.to(lm.device)


def settings(o: MapsOptions) -> dict:
    return {"chat": o.chat, "sampling": asdict(o.sampling), "reduce": o.reduce, "head": o.head,
            "window": o.window, "stride": o.stride}


def run_maps(o: MapsOptions, lm=None, console=None) -> MapsResult:
    """Do it all; ``lm`` may be given already loaded.  Progress goes to a rich ``console``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .collect import collect
    from .html import write_html
    from .sidecar import sidecar_dict, write_sidecar
    from .write import ImagesInterrupted, plan_images, write_images

    console = console or Console(stderr=True)
    check_options(o)
    if lm is None:
        check_chat(o)
        with console.status("loading the model") as status:  # shown on a terminal only
            lm = load(o, progress=lambda message: status.update(message))
    check_model(o, lm)
    ids = encode(o, lm)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("generating", total=o.max_new_tokens)
            data = collect(lm, ids, o.prompt, o.max_new_tokens, o.sampling,
                           on_step=lambda s: bar.update(task, completed=s + 1))
    except KeyboardInterrupt:
        console.print("interrupted while generating: nothing was written")
        raise
    plans = plan_images(data, o.reduce, o.head, o.window, o.stride)
    try:
        os.makedirs(o.output_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --output-dir {o.output_dir}: {exc.strerror or exc}") from None
    tempfiles.sweep(o.output_dir, LEFTOVERS)
    start = time.perf_counter()
    sidecar = sidecar_dict(data, plans, settings(o))
    side_path, page_path = os.path.join(o.output_dir, SIDECAR), os.path.join(o.output_dir, PAGE)
    total = sum(len(p.windows) for p in plans)
    try:
        write_sidecar(side_path, sidecar)
        write_html(page_path, sidecar)
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("writing images", total=total)
            images = write_images(data, plans, o.output_dir, o.workers, advance=lambda n: bar.advance(task, n))
    except OSError as exc:  # the folder became unwritable or the disk filled up during the run
        raise write_error(exc, o.output_dir) from None
    except ImagesInterrupted as stop:
        console.print(f"interrupted: wrote {SIDECAR}, {PAGE} and {len(stop.written)} of {total} images "
                      f"to {o.output_dir}")
        raise
    except KeyboardInterrupt:
        done = [p for p in (side_path, page_path) if os.path.exists(p)]
        console.print(f"interrupted: wrote {', '.join(map(os.path.basename, done)) or 'nothing'} "
                      f"and no images to {o.output_dir}")
        raise
    return MapsResult(o.output_dir, images, side_path, page_path, data.n_generated, data.generation_seconds,
                      time.perf_counter() - start)
