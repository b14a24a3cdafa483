"""Fill the generated tables of the documentation pages and write README.md from docs/index.md.

Usage: ``python docs/build_readme.py`` (after a benchmark or a support sweep wrote new numbers, or after
editing ``docs/index.md``).  ``python docs/build_readme.py --check`` changes nothing and exits 1, naming each
file, when anything is missing or out of date.

The prose lives in one place, the pages ``docs/*.md`` of the documentation site (``mkdocs.yml``).  A table
that a program measures or sweeps is never typed: a page holds a block ::

    <!-- generated: NAME -->

    ...

    <!-- end generated: NAME -->

(a lone first line is enough in a new page: the block is written under it) and this script writes the block's
body.  ``NAME`` is ``supported-models``, the table :func:`openmav.support.markdown_table` makes from the stored
sweep (``openmav/data/supported_models.json``), or a file under ``docs/readme/`` that a benchmark wrote
(``bench/bench_peers.py --readme docs/readme/tables/peers.md``, ``bench/bench_first_token.py --readme
docs/readme/tables/first_token.md``).  Every such file must be shown by some page.

``README.md`` is the site's home page, ``docs/index.md``, with its links to pages and pictures pointed into
``docs/``.

This file is also the MkDocs hook named in ``mkdocs.yml``: before each build it runs the check above and logs a
warning for each problem, so ``mkdocs build --strict`` fails on a missing, empty or stale generated table and on
a README.md that is not docs/index.md's copy.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCES = DOCS / "readme"  # files the benchmarks write, shown by the pages' generated blocks
README = ROOT / "README.md"
HOME = DOCS / "index.md"
MODELS = "supported-models"
BUILD = "python docs/build_readme.py"

OPEN = re.compile(r"<!-- generated: (\S+) -->")
CLOSE = "<!-- end generated: {} -->"
# a relative Markdown link or picture: ](target) where target is no URL, no absolute path, no bare anchor
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)\s]+)\)")


class Problem(Exception):
    """Something the pages need is missing; the message names it."""


def generated(name: str) -> str:
    """The body of the generated block ``name``."""
    if name == MODELS:
        sys.path.insert(0, str(ROOT))
        from openmav.support import load, markdown_table

        return markdown_table(load()).strip()
    path = SOURCES / name
    if not path.is_file():
        raise Problem(f"the generated table {name!r} has no source: {path.relative_to(ROOT)} does not exist")
    text = path.read_text().strip()
    if not text:
        raise Problem(f"the generated table {name!r} is empty: {path.relative_to(ROOT)}")
    return text


def fill(text: str, page: str, cache: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with every generated block's body written anew, and the names of the blocks."""
    lines = text.split("\n")
    out, names, i, fence = [], [], 0, None
    while i < len(lines):
        stripped = lines[i].strip()
        if fence is None and stripped[:3] in ("```", "~~~"):
            fence = stripped[:3]  # a block shown as an example inside a code fence is left alone
        elif fence is not None and stripped.startswith(fence):
            fence = None
        m = OPEN.fullmatch(stripped) if fence is None else None
        if not m:
            out.append(lines[i])
            i += 1
            continue
        name = m.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == CLOSE.format(name)), None)
        nxt = next((j for j in range(i + 1, len(lines)) if OPEN.fullmatch(lines[j].strip())), None)
        if end is not None and nxt is not None and nxt < end:
            raise Problem(f"{page}: the block {name!r} opens another block before its end line")
        if name not in cache:
            cache[name] = generated(name)
        # blank lines around the body: an HTML comment starts an HTML block that runs to the next blank line
        out += [lines[i], "", cache[name], "", CLOSE.format(name)]
        names.append(name)
        i = (end if end is not None else i) + 1
    return "\n".join(out), names


def readme_from(home: str) -> str:
    """README.md's text: the home page with its links pointed into docs/."""
    note = f"\n<!-- This file is written by `{BUILD}` from docs/index.md: edit that page, then run it. -->\n"
    return LINK.sub(lambda m: f"](docs/{m.group(1)})", home).rstrip("\n") + "\n" + note


def expected() -> dict[Path, str]:
    """Every file this script writes, with the text it would write now."""
    cache: dict[str, str] = {}
    want, shown = {}, set()
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new, names = fill(text, page.relative_to(ROOT).as_posix(), cache)
        shown.update(names)
        want[page] = new
    unshown = {MODELS} | {p.relative_to(SOURCES).as_posix() for p in SOURCES.rglob("*.md")}
    unshown -= shown
    if unshown:
        raise Problem(f"no page shows the generated table(s) {', '.join(sorted(unshown))}: add a line "
                      f"'<!-- generated: NAME -->' where it belongs")
    want[README] = readme_from(want[HOME])
    return want


def problems() -> list[str]:
    """What is missing or out of date, one line each (empty when everything is current)."""
    try:
        want = expected()
    except Problem as exc:
        return [str(exc)]
    return [f"{path.relative_to(ROOT)} is out of date: run {BUILD}"
            for path, text in want.items() if not path.is_file() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        found = problems()
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    if argv:
        print(f"usage: {BUILD} [--check]", file=sys.stderr)
        return 2
    try:
        want = expected()
    except Problem as exc:
        print(f"build_readme: {exc}", file=sys.stderr)
        return 1
    for path, text in want.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


# ---- MkDocs hook (mkdocs.yml: hooks: [docs/build_readme.py]) ------------------------------------------------------
log = logging.getLogger("mkdocs.hooks.build_readme")  # under "mkdocs", so --strict counts its warnings


def on_pre_build(config) -> None:
    for line in problems():
        log.warning(line)


if __name__ == "__main__":
    sys.exit(main())
