"""Token text for display.

Three forms of one token:

- ``piece``: the tokenizer's own string (``convert_ids_to_tokens``), e.g. ``"Ġthe"``;
- ``text``: the exact text the token stands for, or ``""`` when the token holds only
  part of a multi-byte character (an emoji can be three tokens);
- ``display``: a readable one-line form: a leading space shown as ``␣``, a newline
  as ``↵``, a tab as ``⇥``, and partial bytes as hex, e.g. ``<F0 9F>``.

:class:`IncrementalDecoder` turns a growing id list into text deltas without
breaking multi-byte characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "⏎"}


@dataclass(frozen=True)
class TokenText:
    id: int
    piece: str
    text: str
    display: str


def _escape_control(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return _VISIBLE.get(ch) or f"\\x{code:02x}"
    return ch


def visible(text: str) -> str:
    """Make whitespace visible: spaces at the ends become ``␣``, newlines ``↵``, tabs ``⇥``.

    Other control characters are shown escaped (``\\x07``), so a label never moves the cursor.
    """
    if not text:
        return ""
    out = "".join(_escape_control(ch) for ch in text)
    stripped = out.strip(" ")
    if not stripped:
        return "␣" * len(out)
    lead = len(out) - len(out.lstrip(" "))
    trail = len(out) - len(out.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail


class TokenTexts:
    """Per-tokenizer cache of :class:`TokenText` by id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self._byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        sample = tokenizer.convert_ids_to_tokens(tokenizer.encode(" a b", add_special_tokens=False))
        self._byte_level = any(p.startswith("Ġ") for p in sample if p)
        self.get = lru_cache(maxsize=200_000)(self._make)

    def token_bytes(self, piece: str) -> bytes | None:
        """The bytes a piece stands for; ``None`` for pieces that are not plain text."""
        match = _BYTE_TOKEN.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if self._byte_level and all(ch in self._byte_of for ch in piece):
            return bytes(self._byte_of[ch] for ch in piece)
        return piece.replace("▁", " ").encode("utf-8")

    def _make(self, token_id: int) -> TokenText:
        token_id = int(token_id)
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            piece = f"<{token_id}>"
        if token_id in self._special:
            return TokenText(token_id, piece, piece, piece)
        raw = self.token_bytes(piece)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # part of a multi-byte character: its text arrives with a later token
            return TokenText(token_id, piece, "", "<" + " ".join(f"{b:02X}" for b in raw) + ">")
        return TokenText(token_id, piece, text, visible(text))

    def many(self, ids) -> list[TokenText]:
        return [self.get(int(i)) for i in ids]


def disambiguate(labels: list[str]) -> list[str]:
    """Tell repeated labels apart: the second ``John`` becomes ``John_2``."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}_{seen[label]}")
    return out


class IncrementalDecoder:
    """Decode a growing list of ids into text deltas.

    Keeps a short window of ids behind the read point so that merges across token
    boundaries (and multi-byte characters) come out right; a delta ending in an
    incomplete character is held back until the character is complete.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.text = ""

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (may be ``""``)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""
