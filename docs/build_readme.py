"""Assemble README.md from docs/readme/*.md (one file per section).

Usage: ``python docs/build_readme.py``.  Image links written relative to
docs/readme (``../images/``) are rewritten relative to the repository root.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["intro", "live", "maps", "analysis", "web", "ablation", "engine", "development"]


def main() -> None:
    parts = []
    for name in ORDER:
        text = (ROOT / "docs" / "readme" / f"{name}.md").read_text().strip()
        parts.append(text.replace("](../images/", "](docs/images/"))
    (ROOT / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
