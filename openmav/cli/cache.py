"""``mav cache list|clean [--all]``: what the model cache holds, and removing what is no longer needed.

The cache (``$OPENMAV_CACHE``, else the platform's user cache dir) keeps one
dequantized copy of each distinct GGUF file (see :mod:`openmav.backends.sources`).
``list`` shows each entry with its size, its source files and whether they still
exist; ``clean`` removes entries whose source is gone, damaged entries, entries
from older openmav versions and stale temporary folders; ``clean --all`` removes
every entry.  A folder that a running conversion holds is always kept.  Importing
this module stays light (no torch).
"""

from __future__ import annotations

import argparse

from .live import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mav cache", description="Show or clean the cache of converted models "
                                                    "($OPENMAV_CACHE, else the platform's user cache dir).")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=OneLineParser)
    sub.add_parser("list", help="entries with their size, source files and whether those still exist",
                   description="List the cache: each converted model with its size, its source GGUF files and "
                               "whether they still exist; leftovers of interrupted conversions; what "
                               "`mav cache clean` would remove.")
    clean = sub.add_parser("clean", help="remove entries whose source is gone, damaged entries and leftovers",
                           description="Remove entries whose source GGUF file is gone, damaged entries, entries "
                                       "from older openmav versions and stale temporary folders.")
    clean.add_argument("--all", action="store_true", help="remove every entry (models are converted again "
                                                          "when next loaded)")
    return p


def human_size(n: int) -> str:
    """``538090408`` -> ``"538.1 MB"`` (powers of 1000)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _label(item) -> str:
    if item.kind == "model":
        return item.sha256[:12]
    name = item.path.name
    return name if len(name) <= 24 else name[:21] + "..."


def _describe(item) -> str:
    from pathlib import Path

    if item.kind == "model":
        name = Path(item.sources[0][0]).name if item.sources else "(source unknown)"
        if item.busy:
            state = "being converted"
        elif item.problem:
            state = f"damaged: {item.problem}"
        elif not item.source_exists:
            state = "source gone"
        else:
            state = "ok"
        return f"{name}  [{state}]"
    if item.kind == "temporary":
        return "temporary folder of a conversion  [" + ("in progress" if item.busy else "stale") + "]"
    if item.kind == "legacy":
        return "entry from an older openmav  [never used again]"
    return "bundled GGUF file assembled from its parts"


def list_cache() -> int:
    from ..backends.sources import cache_dir, cache_items

    items = cache_items()
    root = cache_dir()
    if not items:
        print(f"the cache {root} is empty")
        return 0
    total = sum(i.size for i in items)
    models = sum(i.kind == "model" for i in items)
    print(f"cache {root}: {models} converted model{'s' * (models != 1)}, {human_size(total)} in all")
    for item in items:
        print(f"  {_label(item):<24} {human_size(item.size):>9}  {_describe(item)}")
        for path, exists in item.sources if item.kind == "model" else []:
            print(f"      source {path} ({'exists' if exists else 'gone'})")
    removable = [i for i in items if i.removable]
    if removable:
        print(f"`mav cache clean` would remove {len(removable)} of these "
              f"({human_size(sum(i.size for i in removable))}); `mav cache clean --all` removes everything")
    return 0


def clean(everything: bool) -> int:
    from ..backends.sources import CacheError, cache_dir, clean_cache

    report = clean_cache(everything=everything)
    freed = sum(i.size for i in report.removed)
    kept = [i for i in report.kept if i.kind in ("model", "gguf")]
    what = (f"removed {len(report.removed)} item{'s' * (len(report.removed) != 1)} ({human_size(freed)})"
            if report.removed else "nothing to remove")
    busy = sum(i.busy for i in report.kept)
    print(f"{what} from {cache_dir()}; kept {len(kept)} entr{'ies' if len(kept) != 1 else 'y'} "
          f"({human_size(sum(i.size for i in kept))})" + (f", {busy} in use by a running conversion" if busy else ""))
    if report.failed:
        item, why = report.failed[0]
        more = f" (and {len(report.failed) - 1} more)" if len(report.failed) > 1 else ""
        raise CacheError(f"could not remove {item.path}: {why}{more}")
    return 0


def run(args) -> int:
    if args.action == "list":
        return list_cache()
    return clean(args.all)
