"""The JSON sidecar (``maps.json``): the numbers behind every image of a run.

Layout (``N`` read positions, ``L`` layers, ``S_i = prompt_length + i`` keys of token ``i``)::

    format          "openmav.maps/1"
    model, prompt, chat, sampling, reduce, head, window, stride, n_layers, n_heads, prompt_length
    tokens          [{position, id, text, display, generated}]      every token, prompt then generated
    vocab           {id: {text, display}}                           text of every id in lens / final
    lens            {ids: [N][L][5], probs: [N][L][5]}              logit-lens top-5 per position and layer
    final           {ids: [N][5], probs: [N][5]}                    top-5 of the model's output per position
    steps           [{index, token_id, prob, query_position,
                      attention: [L][S_i], images: [{file, start, end}]}]

``attention`` is the query's attention reduced over heads as named by ``reduce``
(``max``, ``mean`` or ``head`` with ``head``), rounded to 6 decimals.
"""

from __future__ import annotations

import json

import numpy as np

from ..capture.trace import replacing
from .collect import MapsData
from .write import ImagePlan

FORMAT = "openmav.maps/1"


def _round(a: np.ndarray, digits: int = 6) -> list:
    return np.round(a.astype(np.float64), digits).tolist()


def sidecar_dict(data: MapsData, plans: list[ImagePlan], settings: dict) -> dict:
    """The sidecar as a plain dict (``settings``: chat, sampling, reduce, head, window, stride)."""
    p = data.prompt_length
    tokens = [{"position": k, "id": t.id, "text": t.text, "display": t.display, "generated": k >= p}
              for k, t in enumerate(data.tokens)]
    steps = [{"index": plan.index, "token_id": data.generated_token(plan.index).id,
              "prob": round(data.chosen_probs[plan.index], 6), "query_position": data.seq_len(plan.index) - 1,
              "attention": _round(plan.values),
              "images": [{"file": name, "start": a, "end": b} for a, b, name in plan.windows]} for plan in plans]
    out = {"format": FORMAT, "model": data.model_name, "prompt": data.prompt}
    out.update(settings)
    out.update({
        "n_layers": data.n_layers, "n_heads": data.n_heads, "prompt_length": p, "tokens": tokens,
        "vocab": {str(i): {"text": t.text, "display": t.display} for i, t in sorted(data.vocab.items())},
        "lens": {"ids": data.lens_ids.tolist(), "probs": _round(data.lens_probs)},
        "final": {"ids": data.final_ids.tolist(), "probs": _round(data.final_probs)},
        "steps": steps,
    })
    return out


def write_sidecar(path: str, sidecar: dict) -> None:
    """Write a :func:`sidecar_dict` as JSON, atomically (temporary name, then rename)."""
    with replacing(path, sweep=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(sidecar, fh, ensure_ascii=False, separators=(",", ":"))
