"""Documents to token windows: tokenized, packed end to end, cut into windows of ``context`` tokens.

Each document is tokenized with its character offsets and, where the tokenizer has one, preceded by
its beginning-of-sequence token (else its end-of-sequence token separates documents), so a window may
hold the end of one document and the start of the next, as language models are trained.  Every token
keeps ``(document, char_start, char_end)`` (``0, 0`` for the separator), so a hit points back to its
document and character span.

Windows are numbered from 0 in corpus order; token ``t`` of window ``w`` has the global index
``w * context + t``, which orders tokens by document and position (the tie-break of top-K lists).
Windows are grouped in batches of ``batch_size`` windows and batches in shards of ``shard_batches``:
batch ``k`` always holds windows ``k * batch_size`` up to the next batch, whatever the shards, so a
batch's forward (and every number from it) is the same in any sharding.  Only the last window may be
shorter than ``context``; it is a batch of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

TOKENIZE_DOCS = 64  # documents tokenized together (the fast tokenizer's batch)


@dataclass
class Batch:
    """One forward's worth of windows: ``ids`` ``[windows, tokens]`` and per token ``(doc, char_start, char_end)``."""

    index: int
    first_window: int
    ids: np.ndarray  # int64 [b, t]
    meta: np.ndarray  # int64 [b, t, 3]

    @property
    def tokens(self) -> int:
        return int(self.ids.size)


@dataclass
class Shard:
    """Consecutive batches, the unit of work that is committed (and resumed) on its own."""

    index: int
    batches: list[Batch] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.batches)

    def digest(self) -> str:
        """A hash of the shard's token ids and spans: ``--resume`` checks the corpus gives the same windows."""
        h = hashlib.sha256()
        for b in self.batches:
            h.update(np.ascontiguousarray(b.ids, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(b.meta, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass
class DocumentRecord:
    ordinal: int
    source: str
    chars: int
    tokens: int  # tokens of this document that were scanned (with its separator)
    first_token: int  # global index of its first token


def _separator(tokenizer) -> int | None:
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return None


def _tokenized(tokenizer, documents) -> Iterator[tuple[int, str, str, list[int], list[tuple[int, int]]]]:
    """``(ordinal, source, text, ids, offsets)`` per document, tokenized a few dozen at a time."""
    pending: list[tuple[int, str, str]] = []
    for ordinal, (source, text) in enumerate(documents):
        pending.append((ordinal, source, text))
        if len(pending) == TOKENIZE_DOCS:
            yield from _tokenize(tokenizer, pending)
            pending = []
    if pending:
        yield from _tokenize(tokenizer, pending)


def _tokenize(tokenizer, docs):
    enc = tokenizer([text for _, _, text in docs], add_special_tokens=False, return_offsets_mapping=True)
    for (ordinal, source, text), ids, offsets in zip(docs, enc["input_ids"], enc["offset_mapping"]):
        yield ordinal, source, text, list(ids), [tuple(o) for o in offsets]


def batches(tokenizer, documents, context: int, batch_size: int, max_tokens: int | None = None,
            on_document=None) -> Iterator[Batch]:
    """The corpus's batches in order (see the module docstring); ``on_document(DocumentRecord)`` is called
    for each document as its last scanned token is packed."""
    sep = _separator(tokenizer)
    budget = max_tokens if max_tokens is not None else float("inf")
    ids_buf: list[int] = []
    meta_buf: list[tuple[int, int, int]] = []
    windows: list[tuple[list[int], list[tuple[int, int, int]]]] = []
    taken = 0
    batch_index = 0
    window_index = 0

    def flush(force: bool = False):
        nonlocal windows, batch_index, window_index
        out = []
        while len(windows) >= batch_size or (force and windows):
            group, windows = windows[:batch_size], windows[batch_size:]
            full = [w for w in group if len(w[0]) == context]
            short = [w for w in group if len(w[0]) != context]
            for part in (full, short):  # a short (last) window goes in a batch of its own
                if part:
                    ids = np.array([w[0] for w in part], dtype=np.int64)
                    meta = np.array([w[1] for w in part], dtype=np.int64)
                    out.append(Batch(batch_index, window_index, ids, meta))
                    batch_index += 1
                    window_index += len(part)
        return out

    for ordinal, source, text, ids, offsets in _tokenized(tokenizer, documents):
        if taken >= budget:
            break
        toks = ([sep] if sep is not None else []) + ids
        spans = ([(0, 0)] if sep is not None else []) + offsets
        toks = toks[: int(min(len(toks), budget - taken))]
        first = taken
        for tok, (start, end) in zip(toks, spans):
            ids_buf.append(int(tok))
            meta_buf.append((ordinal, int(start), int(end)))
            if len(ids_buf) == context:
                windows.append((ids_buf, meta_buf))
                ids_buf, meta_buf = [], []
        taken += len(toks)
        if on_document is not None:
            on_document(DocumentRecord(ordinal, source, len(text), len(toks), first))
        yield from flush()
    if ids_buf:
        windows.append((ids_buf, meta_buf))
    yield from flush(force=True)


def shards(batch_stream, shard_batches: int) -> Iterator[Shard]:
    """Group consecutive batches into shards of ``shard_batches``."""
    current = Shard(0)
    for batch in batch_stream:
        current.batches.append(batch)
        if len(current.batches) == shard_batches:
            yield current
            current = Shard(current.index + 1)
    if current.batches:
        yield current
