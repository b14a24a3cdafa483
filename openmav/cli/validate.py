"""Which rule each command-line flag must pass, checked right after parsing.

:data:`TABLE` says, for each command (``mav``, ``mav maps``, ``mav compare``, ``mav serve``,
``mav replay``), which rule of :mod:`openmav.rules` each parsed flag must pass.
:func:`openmav.cli.main` runs :func:`check_args` right after parsing, so a bad value costs
milliseconds, never imports torch and never waits for a model; the error is one line
(:class:`~openmav.errors.InputError`).  The rules themselves live in :mod:`openmav.rules`, at
the bottom of the package, so the library checks its arguments with the same objects; the
names below are re-exported for code that imported them from here.
"""

from __future__ import annotations

from ..errors import InputError
from ..rules import (DEVICE, DTYPES, INT_MAX, MAX_NEW_TOKENS, MODEL, SAMPLING, SEED, SEED_MAX, Device,  # noqa: F401
                     DeviceMap, Dtype, ModelName, Number, OffloadFolder, OutputDir, OutputFile, Panels,
                     Quantized, Rule, Text, TraceFile, check_input_file, check_output_dir, check_output_file,
                     check_sampling, check_text, flag_name, utf8_problem)
from ..rules import VIEW as _VIEW_NUMBERS
from ..view.panels.names import BUILTIN_NAMES

VIEW = {**_VIEW_NUMBERS, "selected_panels": Panels(BUILTIN_NAMES)}

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
    "mav scan": {
        **MODEL,
        "data": Text(allow_empty=False),
        "out": OutputDir(),
        "layers": Text(allow_empty=False),
        "units": Text(allow_empty=False),
        "context": Number(int, 2, 1_000_000),
        "top_k": Number(int, 1, 100_000),
        "batch_size": Number(int, 1, 1_000_000),
        "max_tokens": Number(int, 1, 10**15),
        "text_field": Text(allow_empty=False),
        "ray_workers": Number(int, 1, 10_000),
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
    group.add_argument("--verify", action="store_true", help="check the model's parts on the model again, even "
                                                             "where this model and library version passed before")


def loading_kwargs(args) -> dict:
    """``load_model`` keyword arguments from the loading flags."""
    quantization = "8bit" if getattr(args, "load_in_8bit", False) else \
        "4bit" if getattr(args, "load_in_4bit", False) else None
    return {"device_map": getattr(args, "device_map", None), "offload_folder": getattr(args, "offload_folder", None),
            "quantization": quantization, "reverify": bool(getattr(args, "verify", False))}


def check_args(command: str, args) -> None:
    """Check every parsed value of ``command`` that :data:`TABLE` has a rule for (``None``: unset)."""
    for dest, rule in TABLE.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                rule.check(flag_name(dest), value, args)
            except OSError as exc:  # a path the system refuses outright, e.g. a name too long
                raise InputError(f"{flag_name(dest)} {value}: {exc.strerror or exc}") from None


