"""What the web explorer computes on the model, with small caches.

Every method that runs the model must be called while holding the app's
:class:`~openmav.web.jobs.ModelGate`; the caches are only touched under it too.
Ablations go through :mod:`openmav.interventions` (a head's slice of the input
to the attention output projection), never through a copy of it here.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import torch

from ..backends.loading import LoadedModel
from ..capture.hooks import CaptureHooks, attention_implementation
from ..capture.step_loop import token_texts
from ..capture.tokens import disambiguate
from ..errors import InputError, NonFiniteLogitsError
from ..metrics import entropy, kl_divergence

PRESETS = {
    "IOI": "When Mary and John went to the store, John gave a drink to",
    "agreement": "The key to the cabinets",
    "Winograd": "The trophy would not fit in the brown suitcase because it was too big. The big object was the",
}


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value

    def find(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


def repeated_random_text(lm: LoadedModel, n: int = 10, seed: int = 0) -> str:
    """A sequence of ``n`` random word tokens, written twice (induction heads copy the second half)."""
    vocab = lm.tokenizer.convert_ids_to_tokens(list(range(len(lm.tokenizer))))
    words = [i for i, p in enumerate(vocab) if p and p[0] in "Ġ▁" and p[1:].isalpha() and len(p) > 3]
    rng = random.Random(seed)
    picked = rng.sample(words, min(n, len(words))) if words else list(range(10, 10 + n))
    text = lm.tokenizer.decode(picked).strip()
    return f"{text} {text}"


class ExplorerService:
    """The model computations behind the API: attention, the model view, the logit lens, direct logit
    attribution, predictions, scores, evaluations (studies and circuits run in :mod:`~openmav.web.tasks`)."""

    def __init__(self, lm: LoadedModel, max_prompt_tokens: int = 128):
        self.lm = lm
        self.max_prompt_tokens = max_prompt_tokens
        self.parts = lm.parts
        self.vocab_size = int(lm.model.get_output_embeddings().weight.shape[0])
        self._attention = _LRU(4)
        self._logits = _LRU(16)
        self._evaluations = _LRU(8)
        self._resid = _LRU(4)
        self.head_scores: dict | None = None
        self.presets = dict(PRESETS, induction=repeated_random_text(lm))

    # ---- input checks -------------------------------------------------------------------
    def encode(self, prompt: str) -> torch.Tensor:
        if not prompt or not prompt.strip():
            raise InputError("the prompt is empty: type some text")
        ids = self.lm.tokenizer(prompt, return_tensors="pt").input_ids
        n = int(ids.shape[1])
        if n == 0:
            raise InputError("the prompt encodes to no tokens")
        if n > self.max_prompt_tokens:
            raise InputError(f"the prompt is {n} tokens; this server accepts at most {self.max_prompt_tokens} "
                             "tokens (mav serve --max-prompt-tokens N)")
        return ids.to(self.lm.device)

    def check_head(self, layer: int, head: int) -> None:
        L, H = self.parts.n_layers, self.parts.n_heads
        if not 0 <= layer < L:
            raise InputError(f"layer {layer} is out of range: {self.lm.name} has layers 0-{L - 1}")
        if not 0 <= head < H:
            raise InputError(f"head {head} is out of range: {self.lm.name} has heads 0-{H - 1} per layer")
        if layer not in self.parts.attention_layers:
            layers = ", ".join(map(str, self.parts.attention_layers)) or "none"
            raise InputError(f"layer {layer} of {self.lm.name} has no attention heads; attention layers: {layers}")

    def check_token(self, token_id: int, what: str = "token id") -> None:
        if not 0 <= token_id < self.vocab_size:
            raise InputError(f"{what} {token_id} is out of range: valid token ids are 0-{self.vocab_size - 1}")

    def check_position(self, position: int, n: int) -> None:
        if not 0 <= position < n:
            raise InputError(f"position {position} is out of range: the prompt has positions 0-{n - 1}")

    # ---- tokens and attention -----------------------------------------------------------
    def tokens(self, ids: torch.Tensor) -> list[dict]:
        texts = token_texts(self.lm).many(ids[0].tolist())
        labels = disambiguate([t.display or t.piece for t in texts])
        return [{"position": i, "id": t.id, "text": t.text, "display": t.display, "label": lab}
                for i, (t, lab) in enumerate(zip(texts, labels))]

    def label(self, token_id: int) -> str:
        t = token_texts(self.lm).get(int(token_id))
        return t.display or t.piece

    def attention(self, ids: torch.Tensor) -> np.ndarray:
        """Every head's query x key attention of the prompt, ``[L, H, P, P]`` (float32), cached;
        NaN in the layers without attention (a hybrid's other mixers)."""
        key = tuple(ids[0].tolist())
        found = self._attention.find(key)
        if found is not None:
            return found
        n = int(ids.shape[1])
        out = np.full((self.parts.n_layers, self.parts.n_heads, n, n), np.nan, dtype=np.float32)
        with torch.inference_mode(), attention_implementation(self.lm.model, "eager"), \
                CaptureHooks(self.parts, attention=True, last_only=False) as hooks:
            self.lm.model(input_ids=ids)
            for layer in self.parts.attention_layers:
                weights = hooks.pattern[layer]
                if weights is not None:  # [b, h, q, k]; a sliding window's k may be shorter: its last keys
                    out[layer, :, :, n - weights.shape[-1]:] = weights[0].float().cpu().numpy()
                    out[layer, :, :, :n - weights.shape[-1]] = 0.0
        return self._attention.put(key, out)

    def model_view(self, ids: torch.Tensor, size: int) -> dict:
        """Every head's attention as a thumbnail of at most ``size`` x ``size`` (max-pooled over blocks of
        queries and keys when the prompt is longer); ``None`` for the heads of layers without attention."""
        att = self.attention(ids)
        n = att.shape[-1]
        pooled = n > size
        if pooled:
            edges = np.linspace(0, n, size + 1).round().astype(int)
            rows = np.maximum.reduceat(att, edges[:-1], axis=2)
            thumbs = np.maximum.reduceat(rows, edges[:-1], axis=3)
        else:
            thumbs = att
        heads = [[None if layer not in self.parts.attention_layers else thumbs[layer, h].round(4).tolist()
                  for h in range(self.parts.n_heads)] for layer in range(self.parts.n_layers)]
        return {"tokens": self.tokens(ids), "n_layers": self.parts.n_layers, "n_heads": self.parts.n_heads,
                "size": int(min(n, size)), "pooled": pooled, "heads": heads}

    # ---- logit lens and direct logit attribution -----------------------------------------
    def residuals(self, ids: torch.Tensor) -> torch.Tensor:
        """The residual stream after every block, ``[L, P, d]`` (before the final norm), cached."""
        key = tuple(ids[0].tolist())
        found = self._resid.find(key)
        if found is not None:
            return found
        with torch.inference_mode(), CaptureHooks(self.parts, attention=False, last_only=False) as hooks:
            self.lm.model(input_ids=ids, use_cache=False)
            resid = hooks.stacked("resid")[:, 0]
        return self._resid.put(key, resid)

    def logit_lens(self, ids: torch.Tensor, position: int | None, token_id: int | None, top_k: int = 5) -> dict:
        """The logit lens at ``position`` (default: the last): after each block, the final norm and the
        unembedding applied to the residual stream; top-k tokens, and ``token_id``'s probability and rank."""
        n = int(ids.shape[1])
        position = n - 1 if position is None else position
        self.check_position(position, n)
        if token_id is not None:
            self.check_token(token_id)
        resid = self.residuals(ids)[:, position]
        with torch.inference_mode():
            probs = torch.softmax(self.parts.lens(resid).double(), -1).cpu()  # [L, V]
        layers = []
        for layer, p in enumerate(probs):
            if not bool(torch.isfinite(p).all()):
                raise NonFiniteLogitsError(f"the logit lens after layer {layer} is not finite (inf or NaN)")
            target = None
            if token_id is not None:
                target = {"id": token_id, "label": self.label(token_id), "prob": float(p[token_id]),
                          "rank": int((p > p[token_id]).sum()) + 1}
            layers.append({"layer": layer, "top": self._top(p, top_k), "target": target})
        return {"position": position, "token": self.tokens(ids)[position], "layers": layers,
                "note": "after block l: the model's final norm and unembedding applied to the residual stream "
                        "at this position; the last row is the model's own prediction"}

    def direct_logit_attribution(self, ids: torch.Tensor, position: int | None, token_id: int | None) -> dict:
        """Each head's direct contribution to ``token_id``'s logit (default: the model's top token) at
        ``position`` (default: the last), and every other part's, with the final norm frozen at this run."""
        from ..interventions.attribution import direct_logit_attribution

        n = int(ids.shape[1])
        position = n - 1 if position is None else position
        self.check_position(position, n)
        logits = self.logits(ids, [])[position]
        if token_id is None:
            token_id = int(logits.argmax())
        self.check_token(token_id)
        out = direct_logit_attribution(self.lm, ids, token_id, position).to_dict()
        if not all(np.isfinite(out[k]) for k in ("logit", "pre_softcap_logit", "total")):
            raise NonFiniteLogitsError(f"the logit at position {position} is not finite (inf or NaN), so it "
                                       "cannot be decomposed")
        prob = float(torch.softmax(logits.double(), -1)[token_id])
        out.update(token=self.tokens(ids)[position], target={"id": token_id, "label": self.label(token_id),
                                                                "prob": prob},
                   note="each head's output through its slice of the output projection and the unembedding, "
                        "with the final norm's scale frozen at this run; heads and the other parts sum to the "
                        "logit (before a final soft-cap)")
        return _plain(out)

    # ---- predictions under ablation -----------------------------------------------------
    def to_ablations(self, items) -> list:
        from ..interventions.ablation import HeadAblation, validate_ablations

        out = []
        for a in items:
            self.check_head(a.layer, a.head)
            out.append(HeadAblation(a.layer, a.head, kind=a.kind, factor=a.factor, threshold=a.threshold,
                                    positions=tuple(a.positions) if a.positions is not None else None))
        validate_ablations(self.lm, out)
        return out

    def logits(self, ids: torch.Tensor, ablations: list) -> torch.Tensor:
        """Logits at every position ``[P, V]`` (float32) with ``ablations`` applied, cached."""
        key = (tuple(ids[0].tolist()), tuple(repr(a) for a in ablations))
        found = self._logits.find(key)
        if found is not None:
            return found
        with torch.inference_mode():
            if ablations:
                from ..interventions.ablation import ablate_heads

                # a mean ablation takes the head's mean over this prompt's clean forward
                with ablate_heads(self.lm, ablations, reference_ids=ids):
                    out = self.lm.model(input_ids=ids, use_cache=False).logits[0]
            else:
                out = self.lm.model(input_ids=ids, use_cache=False).logits[0]
        return self._logits.put(key, out.float().cpu())

    def predict(self, ids: torch.Tensor, ablations: list, position: int | None, token_id: int | None,
                top_k: int = 5) -> dict:
        n = int(ids.shape[1])
        position = n - 1 if position is None else position
        self.check_position(position, n)
        if token_id is not None:
            self.check_token(token_id)
        before = self.logits(ids, [])[position]
        after = self.logits(ids, ablations)[position] if ablations else before
        if not (bool(torch.isfinite(before).all()) and bool(torch.isfinite(after).all())):
            raise NonFiniteLogitsError(f"the logits at position {position} are not finite (inf or NaN)"
                                       + (" with these ablations: try a smaller scale factor" if ablations else ""))
        pb, pa = torch.softmax(before.double(), -1), torch.softmax(after.double(), -1)
        eb, ea = float(entropy(pb)), float(entropy(pa))
        out = {
            "position": position, "token": self.tokens(ids)[position],
            "before": self._top(pb, top_k), "after": self._top(pa, top_k),
            "kl": max(0.0, float(kl_divergence(before, after))),
            "entropy_before": eb, "entropy_after": ea, "entropy_change": ea - eb,
            "n_ablations": len(ablations), "rank": None,
        }
        if token_id is not None:
            out["rank"] = {"id": token_id, "label": self.label(token_id),
                           "rank_before": int((pb > pb[token_id]).sum()) + 1,
                           "rank_after": int((pa > pa[token_id]).sum()) + 1,
                           "prob_before": float(pb[token_id]), "prob_after": float(pa[token_id])}
        return out

    def _top(self, probs: torch.Tensor, k: int) -> list[dict]:
        top = torch.topk(probs, k)
        return [{"id": int(i), "label": self.label(int(i)), "prob": float(p)}
                for p, i in zip(top.values, top.indices)]

    # ---- whole-model analyses -------------------------------------------------------------
    def cached_evaluation(self, ids: torch.Tensor, kind: str, factor: float = 0.0, threshold: float = 0.0,
                          tokens: tuple[int, int] | None = None) -> dict | None:
        """The all-heads evaluation of this prompt, ablation and logit-difference tokens if one was computed
        already, else None."""
        return self._evaluations.find((tuple(ids[0].tolist()), kind, factor, threshold, tokens))

    def evaluate(self, ids: torch.Tensor, kind: str, batch_size: int = 32, cancel=None, on_batch=None,
                 factor: float = 0.0, threshold: float = 0.0, tokens: tuple[int, int] | None = None) -> dict:
        """Every single-head ablation's effect (``evaluate_all_heads(...).to_dict()``), cached per prompt, kind
        and logit-difference tokens (``None``: the baseline's two most likely).

        ``cancel`` and ``on_batch`` go to the library, which raises ``Cancelled`` when
        ``cancel`` is set before the last batch (nothing is cached then).
        """
        from ..interventions.evaluate import evaluate_all_heads

        found = self.cached_evaluation(ids, kind, factor, threshold, tokens)
        if found is None:
            effects = evaluate_all_heads(self.lm, ids, kind=kind, batch_size=batch_size, cancel=cancel,
                                         on_batch=on_batch, factor=factor, threshold=threshold, tokens=tokens)
            found = self._evaluations.put((tuple(ids[0].tolist()), kind, factor, threshold, tokens),
                                          effects.to_dict())
        return found

    def scores(self) -> dict:
        if self.head_scores is None:
            from ..analysis.head_scores import compute_head_scores

            self.head_scores = _plain(compute_head_scores(self.lm).to_dict())
        return self.head_scores


def _plain(value):
    """numpy arrays and scalars inside dicts/lists -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
