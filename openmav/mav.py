"""``MAV``: the Python entry point of the live view (what ``mav`` runs).

>>> MAV("smollm2-135m", "hello world", selected_panels=["generated_text", "top_predictions"])  # doctest: +SKIP

It loads the model (or wraps ``model_obj``/``tokenizer_obj``), generates with one
KV-cached forward per token, and shows the panels: live in a terminal, one plain
line (or JSON line) per token otherwise.  Only the captures the chosen panels
read are switched on: attention for the attention panels, the logit lens (one
unembedding per layer and token, the costliest capture) only for ``logit_lens``.

Torch's intra-op threads are set for the run (``threads``; by default
:func:`default_threads`, measured in ``docs/readme/live.md``) and restored after it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Iterable

from .errors import InputError
from .rules import Callback
from .view.options import SCALES, ViewOptions
from .view.panels.registry import make_panels, needed_captures

DEFAULT_PROMPT = "Once upon a time, in a small village by the sea,"
FORMATS = ("auto", "live", "text", "jsonl", "snapshot")


@dataclass
class MAVResult:
    """What a run produced: the text, each token's measurements, whether Ctrl-C ended it."""

    text: str = ""
    measurements: list = field(default_factory=list)
    interrupted: bool = False

    @property
    def records(self):
        return [m.record for m in self.measurements]


# steps per logit-lens product where no view shows each token as it comes (text and JSON lines, snapshot)
STREAM_LENS_BATCH = 8


def capture_config(panels, record_everything: bool = False, lens_batch: int = 1):
    """The :class:`CaptureConfig` that ``panels`` need (all captures if ``record_everything``).

    ``lens_batch``: steps per logit-lens product; 1 for the live and interactive views (the newest
    token's lens in the next frame), :data:`STREAM_LENS_BATCH` for outputs that write records in order
    without showing each at once (the records then come that many at a time, each with its lens)."""
    from .capture.step_loop import CaptureConfig

    needs = needed_captures(panels)
    return CaptureConfig(attention=record_everything or "attention" in needs, prompt_attention=False,
                         logit_lens=record_everything or "logit_lens" in needs, lens_batch=lens_batch)


def stream_lens_batch(mode: str, console) -> int:
    """Steps per lens product for view ``mode`` (``auto`` resolved as :func:`run_view` does)."""
    if mode == "auto":
        mode = "live" if console.is_terminal else "text"
    return STREAM_LENS_BATCH if mode in ("text", "jsonl", "snapshot") else 1


def check_record_path(record) -> None:
    """Fail before any work when the trace file could not be written."""
    if record:
        from pathlib import Path

        parent = Path(record).expanduser().resolve().parent
        if not parent.is_dir():
            raise InputError(f"cannot record to {record}: the folder {parent} does not exist")


def available_cores() -> int:
    """Physical CPU cores this process may run on (logical CPUs when that is unknown)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = logical
    return max(1, min(logical, physical))


def default_threads() -> int | None:
    """The torch intra-op threads ``mav`` uses unless told: one fewer than the physical cores,
    at least 1, so the drawing thread and the logit lens's worker thread (and whatever else
    the machine runs) keep a core; ``None`` (leave torch as it is) when ``OMP_NUM_THREADS``
    is set.  Measured on 2 cores (``docs/readme/live.md``): idle, 1 thread 44 ms/token and 2
    threads 43 without the lens, 47 and 64 with it; busy, 74 and 650.5 without the lens."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, available_cores() - 1)


def _load_backend(model, device, seed, model_obj, tokenizer_obj, dtype, backend, placement=None):
    """The backend, loaded: on a terminal with one progress line of ours (on stderr, gone when
    done); transformers' own progress bars are silenced either way."""
    from .backends.model_backend_transformers import TransformersBackend
    from .backends.sources import default_model_name

    if backend != "transformers":
        raise InputError(f"unknown backend {backend!r}: the only backend is transformers")
    name = model if model_obj is not None else (model or default_model_name())
    err = _console(stderr=True)
    be = TransformersBackend(name, device=device, seed=seed, model_obj=model_obj, tokenizer_obj=tokenizer_obj,
                             dtype=dtype, **(placement or {}))
    if err.is_terminal:
        with err.status(f"loading {_short(name)}…", spinner="dots") as status:
            be.progress = lambda msg: status.update(msg + "…")
            be.initialize()
    else:
        be.progress = lambda msg: None  # a callback keeps transformers' bars off; nothing to show
        be.initialize()
    return be


def _short(name: str) -> str:
    """A model name fit for a status line (the last part of a path)."""
    from pathlib import Path

    return Path(str(name)).name or str(name)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def run_view(stream: Iterable, panels, *, mode: str = "auto", console=None, refresh_rate: float = 10.0,
             num_grid_rows: int | None = None, options: ViewOptions | None = None, title: str = "mav",
             keys=None, snapshot_height: int = 24) -> MAVResult:
    """Show a stream of :class:`ModelMeasurements` in ``mode``.

    ``live``: the live view; ``interactive``: one token per key; ``text``/``jsonl``:
    one line per token; ``snapshot``: generate everything, then print the panels of
    the last token once (for logs, e.g. training loops).
    """
    console = console or _console()
    if mode == "auto":
        mode = "live" if console.is_terminal else "text"
    result = MAVResult()
    if mode in ("text", "jsonl"):
        from .view.plain import jsonl_line, text_line
    else:  # the dashboard (rich's layout and live display) is imported only where one is drawn
        from .view.main_loop_manager import MainLoopManager
    if mode == "snapshot":
        manager = MainLoopManager(panels, console, refresh_rate, num_grid_rows, options, title)
        result.measurements = list(stream)
        if result.measurements:
            manager.show(result.measurements[-1])
            console.print(manager.dashboard, height=snapshot_height)
    elif mode in ("text", "jsonl"):
        line = jsonl_line if mode == "jsonl" else text_line
        out = console.file
        try:
            for m in stream:
                result.measurements.append(m)
                out.write(line(m.record) + "\n")
                out.flush()
        except KeyboardInterrupt:
            result.interrupted = True
        if mode == "text" and result.measurements:
            out.write(result.measurements[-1].generated_text + "\n")
    else:
        manager = MainLoopManager(panels, console, refresh_rate, num_grid_rows, options, title)
        if mode == "interactive":
            from .view.keys import KeyReader

            with (keys or KeyReader()) as reader:
                result.measurements = manager.run_interactive(stream, reader)
        else:
            result.measurements = manager.run(stream)
        result.interrupted = manager.interrupted
        if result.measurements:
            console.print(manager.dashboard, height=max(8, console.height - 3))
            console.print(("[bold red]interrupted[/] · " if result.interrupted else "") + "[bold]generated text:[/]")
            console.print(result.measurements[-1].generated_text, markup=False, highlight=False)
    if result.measurements:
        result.text = result.measurements[-1].generated_text
    return result


def check_mav_args(model, prompt, max_new_tokens, refresh_rate, interactive, temp, top_k, top_p, min_p,
                   repetition_penalty, seed, num_grid_rows, record, reverify) -> None:
    """:func:`MAV`'s numbers, text and flags by the command line's own rules (:mod:`openmav.rules`), before
    any panel is made or model loaded; the view options, device, dtype and panels are checked where they
    are used (:class:`~openmav.view.options.ViewOptions`, the backend, the panel registry), also before."""
    from .rules import MAX_NEW_TOKENS, VIEW, Flag, check_model_name, check_sampling, check_text

    if model is not None:
        check_model_name("model", model)
    if prompt is not None:
        check_text("prompt", prompt)
    MAX_NEW_TOKENS.check("max_new_tokens", max_new_tokens)
    if refresh_rate != float("inf"):  # inf: no cap (what the command line's 0 becomes)
        VIEW["refresh_rate"].check("refresh_rate", refresh_rate)
    if num_grid_rows is not None:
        VIEW["num_grid_rows"].check("num_grid_rows", num_grid_rows)
    check_sampling(temp, top_k, top_p, min_p, repetition_penalty, seed)
    for name, value in (("temp", temp), ("top_p", top_p), ("min_p", min_p), ("repetition_penalty",
                                                                               repetition_penalty)):
        if value is None:
            raise InputError(f"{name} must be a number, got None")
    Flag().check("interactive", interactive)
    Flag().check("reverify", reverify)
    if record:  # "" or None: no recording
        from .rules import check_save_path

        check_save_path("record", record)


def MAV(model: str | None = None, prompt: str | None = None, max_new_tokens: int = 200, refresh_rate: float = 10.0,
        interactive: bool = False, limit_chars: int = 400, temp: float = 0.0, top_k: int = 50, top_p: float = 1.0,
        min_p: float = 0.0, repetition_penalty: float = 1.0, max_bar_length: int = 35, device: str = "auto",
        scale: str = "auto", backend: str = "transformers", seed: int | None = 42, model_obj=None,
        tokenizer_obj=None, selected_panels=None, num_grid_rows: int | None = None, external_panels=None,
        aggregation: str = "l2", format: str = "auto", record: str | None = None, dtype: str = "float32",
        console=None, keys=None, threads: int | None = None, device_map=None, offload_folder: str | None = None,
        quantization: str | None = None, reverify: bool = False, on_loaded=None) -> MAVResult:
    """Run the live view on ``model`` (default: the bundled SmolLM2-135M) continuing ``prompt``.

    ``temp`` 0 is greedy; ``top_k``/``top_p``/``min_p``/``repetition_penalty`` act as in
    transformers.  ``selected_panels`` names panels (built-in names or the class names
    of ``external_panels``, which may be ``PanelBase`` classes or instances).
    ``format``: ``auto`` (live in a terminal, else text), ``live``, ``text``, ``jsonl``.
    ``record``: also save every step's record to this trace file (see
    :mod:`openmav.capture.trace`).  ``scale``: ``auto`` (per panel, log when one layer
    dominates, else linear), ``linear``, ``log`` or ``minmax``.  ``threads``: torch
    intra-op threads for the run (default :func:`default_threads`), restored afterwards.
    ``device_map``/``offload_folder``/``quantization``: as
    :func:`~openmav.backends.loading.load_model` (a model bigger than one device, 8/4-bit).
    ``reverify``: verify the model's parts again even where a verdict for this model and library
    version is remembered (``--verify``).
    ``on_loaded``: called with no arguments once the model is loaded, before the first token (the ``mav``
    command resumes Python's garbage collector there: :func:`openmav.cli.live.resume_collector`).
    Returns a :class:`MAVResult`.
    """
    from .processors.state_fetcher import StateFetcher
    from .processors.state_processor import AGGREGATIONS

    check_mav_args(model, prompt, max_new_tokens, refresh_rate, interactive, temp, top_k, top_p, min_p,
                   repetition_penalty, seed, num_grid_rows, record, reverify)
    Callback().check("on_loaded", on_loaded)
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if aggregation not in AGGREGATIONS or scale not in SCALES:
        raise InputError(f"aggregation must be one of {', '.join(AGGREGATIONS)} and scale one of {', '.join(SCALES)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024):
        raise InputError(f"threads must be a whole number from 1 to 1024, got {threads!r}")
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    if not str(prompt).strip():
        raise InputError("the prompt is empty: give some text to continue")
    options = ViewOptions(max_bar_length=max_bar_length, limit_chars=limit_chars, scale=scale,
                          aggregation=aggregation, prompt=prompt)
    panels = make_panels(selected_panels, external_panels, None, options)
    check_record_path(record)
    console = console or _console()
    mode = "interactive" if interactive else format
    if mode == "interactive" and keys is None and not sys.stdin.isatty():
        raise InputError("--interactive needs a terminal (stdin is not one)")
    from .capture.lens import torch_threads

    with torch_threads(default_threads() if threads is None else threads):
        be = _load_backend(model, device, seed, model_obj, tokenizer_obj, dtype, backend,
                           {"device_map": device_map, "offload_folder": offload_folder, "quantization": quantization,
                            "reverify": reverify})
        if on_loaded is not None:
            on_loaded()
        # the panels scale per panel themselves; the processor's *_normalized fields (for plugins) stay linear
        fetcher = StateFetcher(be, max_new_tokens, aggregation, "linear" if scale == "auto" else scale,
                               capture_config(panels, record_everything=False,
                                              lens_batch=stream_lens_batch(mode, console)))
        stream = fetcher.fetch_next(prompt, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                    repetition_penalty=repetition_penalty)
        title = f"mav · {_short(be.loaded.name)}"
        result = run_view(stream, panels, mode=mode, console=console, refresh_rate=refresh_rate,
                          num_grid_rows=num_grid_rows, options=options, title=title, keys=keys)
    if record:
        from .capture.trace import save_trace

        meta = {"model": be.loaded.name, "prompt": prompt, "max_new_tokens": max_new_tokens, "temp": temp,
                "top_k": top_k, "top_p": top_p, "min_p": min_p, "repetition_penalty": repetition_penalty,
                "seed": seed, "aggregation": aggregation, "scale": scale,
                "selected_panels": [p.panel_name() for p in panels]}
        save_trace(record, result.records, meta)
    return result
