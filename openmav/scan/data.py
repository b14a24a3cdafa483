"""The corpus of a scan, read as a stream of documents: memory stays bounded whatever the corpus size.

:func:`open_corpus` checks a path (before any model loads) and returns a :class:`Corpus`, whose
:meth:`Corpus.documents` yields ``(source, text)`` one document at a time:

- a ``.txt`` file: one document per non-empty line;
- a ``.jsonl`` file: one JSON object per line, the document in ``text_field`` (default ``text``);
- a ``.parquet`` file: the ``text_field`` column, read a record batch at a time (pyarrow);
- a folder: every ``.txt``, ``.md`` and ``.py`` file below it, in sorted path order, one document each;
- a folder written by Hugging Face ``datasets``' ``save_to_disk`` (it holds ``dataset_info.json`` or
  ``state.json``): read with ``datasets.load_from_disk`` (``datasets`` is optional).

``source`` names where a document came from (``path:line`` or a path); every scan hit points back to
a document's ordinal and a character span of its text.  :attr:`Corpus.fingerprint` identifies the data
(paths, sizes, modification times and the text field) so ``--resume`` can refuse another corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError

FOLDER_SUFFIXES = (".txt", ".md", ".py")
SNIFF = 8192  # bytes read to tell text from binary


def _binary(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 4  # a character cut at the end of the sniffed bytes is fine
    return False


@dataclass(frozen=True)
class Corpus:
    """A checked corpus: ``kind`` is ``txt``, ``jsonl``, ``parquet``, ``folder`` or ``datasets``."""

    path: Path
    kind: str
    text_field: str
    files: tuple[Path, ...]
    fingerprint: str

    def documents(self) -> Iterator[tuple[str, str]]:
        """``(source, text)`` per document, in a fixed order; empty documents are skipped."""
        reader = {"txt": self._txt, "jsonl": self._jsonl, "parquet": self._parquet, "folder": self._folder,
                  "datasets": self._datasets}[self.kind]
        for source, text in reader():
            if text and text.strip():
                yield source, text

    def _txt(self):
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh, 1):
                yield f"{self.path.name}:{i}", line.rstrip("\r\n")

    def _jsonl(self):
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise InputError(f"{self.path} line {i} is not JSON: a .jsonl file holds one JSON object "
                                     "per line") from None
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise InputError(f"{self.path} line {i} has no text field {self.text_field!r} "
                                     "(choose it with --text-field)")
                yield f"{self.path.name}:{i}", text

    def _parquet(self):
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=1024, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                yield f"{self.path.name}:{row}", text if isinstance(text, str) else ""

    def _folder(self):
        for path in self.files:
            with open(path, encoding="utf-8", errors="replace") as fh:
                yield str(path.relative_to(self.path)), fh.read()

    def _datasets(self):
        from datasets import load_from_disk

        data = load_from_disk(str(self.path))
        if hasattr(data, "keys") and not hasattr(data, "column_names"):  # a DatasetDict: its splits in order
            splits = [(name, data[name]) for name in sorted(data.keys())]
        else:
            splits = [("", data)]
        for name, split in splits:
            for i, record in enumerate(split.select_columns([self.text_field]).iter(batch_size=1024)):
                for j, text in enumerate(record[self.text_field]):
                    yield f"{name + ':' if name else ''}{i * 1024 + j + 1}", text if isinstance(text, str) else ""


def _fingerprint(kind: str, text_field: str, files) -> str:
    digest = hashlib.sha256(f"{kind}|{text_field}".encode())
    for path in files:
        st = path.stat()
        digest.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _check_text_file(path: Path) -> None:
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): give a corpus with some text")
    if _binary(path):
        raise InputError(f"{path} is not UTF-8 text (it looks binary): give a .txt, .jsonl or .parquet corpus")


def _first_jsonl_record(path: Path, text_field: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise InputError(f"{path} line {i} is not JSON: a .jsonl file holds one JSON object per line") \
                    from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise InputError(f"{path} has no text field {text_field!r} (its first record has: {keys}); "
                                 "choose one with --text-field")
            return
    raise InputError(f"{path} holds no JSON records")


def _datasets_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or \
        (path / "dataset_dict.json").is_file()


def open_corpus(path, text_field: str = "text") -> Corpus:
    """Check ``path`` and what it holds (one :class:`InputError` line if anything is wrong) and return it."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError("no data given: pass a .txt, .jsonl or .parquet file, a folder, or a saved dataset")
    if not isinstance(text_field, str) or not text_field:
        raise InputError("the text field must be a non-empty name")
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError(f"no data at {path}")
    if target.is_dir():
        if _datasets_folder(target):
            try:
                import datasets  # noqa: F401
            except ImportError:
                raise InputError(f"{path} is a saved Hugging Face dataset: reading it needs the datasets package "
                                 "(pip install datasets)") from None
            from datasets import load_from_disk

            try:
                data = load_from_disk(str(target))
            except Exception as exc:  # noqa: BLE001 - one line, whatever datasets raised
                raise InputError(f"cannot read the dataset at {path}: {str(exc).splitlines()[0]}") from None
            splits = [data[k] for k in sorted(data.keys())] if not hasattr(data, "column_names") else [data]
            for split in splits:
                if text_field not in split.column_names:
                    raise InputError(f"the dataset at {path} has no column {text_field!r} (it has: "
                                     f"{', '.join(split.column_names)}); choose one with --text-field")
            if sum(len(s) for s in splits) == 0:
                raise InputError(f"the dataset at {path} has no rows")
            files = tuple(sorted(p for p in target.rglob("*") if p.is_file()))
            return Corpus(target, "datasets", text_field, files, _fingerprint("datasets", text_field, files))
        files = tuple(sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES))
        if not files:
            raise InputError(f"{path} holds no {', '.join(FOLDER_SUFFIXES)} files")
        files = tuple(p for p in files if p.stat().st_size > 0 and not _binary(p))
        if not files:
            raise InputError(f"every {', '.join(FOLDER_SUFFIXES)} file in {path} is empty or binary")
        return Corpus(target, "folder", text_field, files, _fingerprint("folder", text_field, files))
    if not target.is_file():
        raise InputError(f"{path} is not a regular file")
    suffix = target.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(target)
        except Exception as exc:  # noqa: BLE001 - pyarrow's own error, as one line
            raise InputError(f"{path} is not a Parquet file pyarrow can read ({str(exc).splitlines()[0]})") \
                from None
        if text_field not in schema.names:
            raise InputError(f"{path} has no column {text_field!r} (it has: {', '.join(schema.names)}); choose "
                             "one with --text-field")
        if pq.ParquetFile(target).metadata.num_rows == 0:
            raise InputError(f"{path} has no rows")
        return Corpus(target, "parquet", text_field, (target,), _fingerprint("parquet", text_field, (target,)))
    if suffix in FOLDER_SUFFIXES[1:]:  # one .md or .py file: one document, as in a folder
        _check_text_file(target)
        return Corpus(target.parent, "folder", text_field, (target,), _fingerprint("folder", text_field, (target,)))
    if suffix not in (".txt", ".jsonl", ".text", ".json"):
        raise InputError(f"{path}: unknown corpus format {suffix or '(no suffix)'}; use .txt (one document a line), "
                         ".jsonl, .parquet, a folder of .txt/.md/.py files, or a saved dataset")
    _check_text_file(target)
    kind = "jsonl" if suffix in (".jsonl", ".json") else "txt"
    if kind == "jsonl":
        _first_jsonl_record(target, text_field)
    return Corpus(target, kind, text_field, (target,), _fingerprint(kind, text_field, (target,)))
