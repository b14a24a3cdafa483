"""Assemble README.md from docs/readme/*.md (one file per section).

Usage: ``python docs/build_readme.py``.  Image links written relative to
docs/readme (``../images/``) are rewritten relative to the repository root.  The
"Supported models" table is generated from ``openmav/data/supported_models.json``
(written by ``python -m openmav.support``); a line ``<!-- generated: PATH -->`` is replaced
by the file ``docs/readme/PATH``, which a benchmark wrote (``bench/bench_peers.py --readme``).
"""

import re

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["intro", "live", "maps", "analysis", "web", "ablation", "engine", "models", "placement", "development"]


def main() -> None:
    parts = []
    for name in ORDER:
        text = (ROOT / "docs" / "readme" / f"{name}.md").read_text().strip()
        if name == "models":  # the support table is generated from the stored sweep, never typed
            import sys

            sys.path.insert(0, str(ROOT))
            from openmav.support import load, markdown_table

            text += "\n\n" + markdown_table(load()).strip()
        text = re.sub(r"<!-- generated: (\S+) -->",
                      lambda m: (ROOT / "docs" / "readme" / m.group(1)).read_text().strip(), text)
        parts.append(text.replace("](../images/", "](docs/images/"))
    (ROOT / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
