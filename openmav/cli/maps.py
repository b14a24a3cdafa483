"""``mav maps``: logit-lens attention maps for every generated token.

Writes ``attn_{i}_{j}.png`` (or ``attn_{i}.png``) per generated token ``i`` and
window ``j``, ``maps.json`` (the numbers) and ``maps.html`` (a page to browse them)
into ``--output-dir``.  Flags are checked by :mod:`openmav.cli.validate` (finite,
in range) and the output folder by :func:`openmav.maps.run.check_options`, both
before the model loads.
"""

from __future__ import annotations

import argparse
import os

from .live import OneLineParser
from .validate import add_loading_flags


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="bundled name (smollm2-135m, gemma3-270m), .gguf, directory "
                   "or hub id (default: the bundled default model)")
    g.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_loading_flags(g)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temp", type=float, default=0.0, help="temperature; 0 is greedy (default 0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 turns it off")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling, 0 to 2**64-1")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mav maps", description=__doc__.strip().splitlines()[0])
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--output-dir", required=True, help="where the images, maps.json and maps.html go")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate (default 20)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--window", type=int, default=32, help="key positions per image (default 32)")
    p.add_argument("--stride", type=int, default=5, help="positions between windows (default 5)")
    p.add_argument("--reduce", choices=["max", "mean", "head"], default=None,
                   help="how heads are combined in a cell: max (default), mean, or one --head")
    p.add_argument("--head", type=int, default=None, help="the query head shown (implies --reduce head)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes writing images (default: CPU count; 0 writes in this process)")
    p.add_argument("--overwrite", action="store_true", help="replace maps already in --output-dir")
    _add_model_flags(p)
    _add_sampling_flags(p)
    return p


def options_from_args(args: argparse.Namespace):
    from ..capture import SamplingConfig
    from ..maps.run import MapsOptions

    reduce = args.reduce or ("head" if args.head is not None else "max")
    workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, 8)
    sampling = SamplingConfig(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)
    return MapsOptions(model=args.model, prompt=args.prompt, output_dir=args.output_dir,
                       max_new_tokens=args.max_new_tokens, sampling=sampling, device=args.device,
                       dtype=args.dtype, chat=args.chat, window=args.window, stride=args.stride, reduce=reduce,
                       head=args.head, load_in_8bit=args.load_in_8bit, workers=workers, overwrite=args.overwrite,
                       load_in_4bit=args.load_in_4bit, device_map=args.device_map,
                       offload_folder=args.offload_folder, reverify=args.verify)


def check_flag_pairs(args: argparse.Namespace) -> None:
    """The flag combinations refused before torch is imported (ranges are in :mod:`openmav.cli.validate`)."""
    from ..errors import InputError
    from ..maps.windows import check_window  # light: no torch

    check_window(args.window, args.stride)
    if args.reduce == "head" and args.head is None:
        raise InputError("--reduce head needs --head N (the query head to show)")
    if args.head is not None and args.reduce not in (None, "head"):
        raise InputError(f"--head {args.head} goes with --reduce head, not --reduce {args.reduce}")


def run(args: argparse.Namespace) -> int:
    check_flag_pairs(args)
    from ..maps.run import check_options, run_maps

    options = options_from_args(args)
    check_options(options)  # before the model loads: a bad directory or flag fails at once
    result = run_maps(options)
    print(f"{len(result.images)} images for {result.n_generated} generated tokens, "
          f"{os.path.basename(result.sidecar)} and {os.path.basename(result.page)} in {result.output_dir}")
    print(f"generation {result.generation_seconds:.1f} s, writing {result.writing_seconds:.1f} s")
    return 0
