"""The argument rules that need a loaded model: is it one, how many token ids and positions it takes.

The rule objects themselves are :mod:`openmav.rules` (shared with the command line); this module
only reads the numbers a rule needs off a :class:`~openmav.backends.loading.LoadedModel` (the
vocabulary of its embedding, its context) without running anything, so every public function of
the engine and of the interventions can refuse bad ids before a tensor is made or a forward runs.
"""

from __future__ import annotations

from ..errors import InputError
from ..rules import TokenIds, shown


def check_lm(lm, flag: str = "lm"):
    """``lm`` must look like a :class:`~openmav.backends.loading.LoadedModel` (model, tokenizer, parts)."""
    if not all(hasattr(lm, name) for name in ("model", "tokenizer", "parts")):
        raise InputError(f"{flag} must be a LoadedModel (openmav.backends.load_model or wrap_model), "
                         f"got {shown(lm)}")
    return lm


def vocab_size(lm) -> int | None:
    """How many token ids the model's input embedding takes (``None`` when it has none to ask)."""
    get = getattr(lm.model, "get_input_embeddings", None)
    embed = get() if callable(get) else None
    n = getattr(embed, "num_embeddings", None)
    if n is None:
        weight = getattr(embed, "weight", None)
        n = None if weight is None else weight.shape[0]
    return None if n is None else int(n)


def ids_rule(lm, reserve: int = 0, *, lists: bool = False, one_d: bool = False) -> TokenIds:
    """The :class:`~openmav.rules.TokenIds` rule of ``lm``: its vocabulary and context; ``reserve`` new
    tokens must fit after the ids."""
    return TokenIds(vocab_size(lm), getattr(lm, "context_length", None), reserve, lists=lists, one_d=one_d)


def check_ids(lm, flag: str, value, reserve: int = 0, *, lists: bool = False, one_d: bool = False):
    """``value`` checked as token ids of ``lm`` (see :class:`~openmav.rules.TokenIds`); returns it unchanged."""
    return ids_rule(lm, reserve, lists=lists, one_d=one_d).check(flag, value)
