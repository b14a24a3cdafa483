"""Request and response models of the JSON API (they make its OpenAPI schema).

Pydantic checks types (strictly: ``true`` is not an integer, ``"3"`` not a number),
model-independent bounds and that text is valid Unicode; the app then checks layer,
head and token ids against the loaded model and answers 422 naming the valid range.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

AblationKind = Literal["zero", "mean", "scale", "permute", "sparsify"]
MAX_PROMPT_CHARS = 4000
MAX_FACTOR = 1000.0  # a larger scale overflows the logits of a float16 model


def _utf8_text(value):
    """Refuse text that cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"`` from JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"the text is not valid Unicode: a lone surrogate {value[exc.start]!a} at character "
                             f"{exc.start} (it has no UTF-8 form); send whole characters") from None
    return value


#: Text the tokenizer can take: valid Unicode (no lone surrogates), checked before any other rule.
Text = Annotated[str, BeforeValidator(_utf8_text)]


class ErrorResponse(BaseModel):
    """Every error answer: one readable line, and for a 422 from validation the problems one by one."""

    detail: str = Field(description="what is wrong and, where there is one, the valid range")
    errors: Optional[list[dict]] = Field(None, description="422 from request validation: each problem "
                                                           "(Pydantic's type, loc, msg)")


class _Request(BaseModel):
    """A request body: strict, so a value is taken only as the type the schema names (``true`` is no integer)."""

    model_config = ConfigDict(strict=True)


class HeadRef(_Request):
    layer: int = Field(ge=0, description="layer index, 0-based")
    head: int = Field(ge=0, description="query head index within the layer, 0-based")


class Ablation(HeadRef):
    """One head switched off (or changed) at its slice of the output projection's input."""

    kind: AblationKind = "zero"
    factor: float = Field(0.0, ge=-MAX_FACTOR, le=MAX_FACTOR, allow_inf_nan=False,
                          description="scale: the head's output is multiplied by this")
    threshold: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="sparsify: entries with |x| below this become 0")
    positions: Optional[list[int]] = Field(None, description="token positions to ablate; all when omitted")


class PromptRequest(_Request):
    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class AttentionRequest(PromptRequest):
    heads: list[HeadRef] = Field(default_factory=list, max_length=64,
                                 description="heads whose full query x key attention is returned")


class TokenInfo(BaseModel):
    position: int
    id: int
    text: str
    display: str
    label: str = Field(description="display text, repeated tokens told apart (John, John_2)")


class HeadAttention(BaseModel):
    layer: int
    head: int
    weights: list[list[float]] = Field(description="[query][key] attention probabilities")


class AttentionResponse(BaseModel):
    tokens: list[TokenInfo]
    heads: list[HeadAttention]


class PredictRequest(PromptRequest):
    ablations: list[Ablation] = Field(default_factory=list, max_length=512)
    position: Optional[int] = Field(None, ge=0, description="query position whose next token is predicted; "
                                                            "the last when omitted")
    token_id: Optional[int] = Field(None, ge=0, description="a token whose rank before/after is reported")
    top_k: int = Field(5, ge=1, le=50)


class Candidate(BaseModel):
    id: int
    label: str
    prob: float


class TokenRank(BaseModel):
    id: int
    label: str
    rank_before: int = Field(description="1 = most likely")
    rank_after: int
    prob_before: float
    prob_after: float


class PredictResponse(BaseModel):
    position: int
    token: TokenInfo
    before: list[Candidate]
    after: list[Candidate]
    kl: float = Field(description="KL(before || after) of the next-token distribution, nats")
    entropy_before: float
    entropy_after: float
    entropy_change: float
    rank: Optional[TokenRank] = None
    n_ablations: int


class AblationShape(_Request):
    """How every ablation of an evaluation or a study is done (as in :class:`Ablation`)."""

    kind: AblationKind = "zero"
    factor: float = Field(0.0, ge=-MAX_FACTOR, le=MAX_FACTOR, allow_inf_nan=False,
                          description="scale: the head's output is multiplied by this")
    threshold: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="sparsify: entries with |x| below this become 0")


class EvaluateRequest(PromptRequest, AblationShape):
    token_a: Optional[int] = Field(None, ge=0, description="the logit difference logit[a] - logit[b] whose change "
                                                           "is reported: a (with token_b; both omitted: the "
                                                           "baseline's two most likely tokens)")
    token_b: Optional[int] = Field(None, ge=0, description="the logit difference's b")


class StudyRequest(PromptRequest, AblationShape):
    mode: Literal["generic", "targeted", "logit_diff"] = "generic"
    target_id: Optional[int] = Field(None, ge=0, description="targeted: the token to make the most likely")
    token_a: Optional[int] = Field(None, ge=0, description="logit_diff: find the heads whose ablation lowers "
                                                           "logit[token_a] - logit[token_b] most")
    token_b: Optional[int] = Field(None, ge=0, description="logit_diff: the other token")
    max_heads: int = Field(5, ge=1, le=20)
    candidates: int = Field(20, ge=1, le=200)


class CircuitRequest(PromptRequest):
    corrupt_prompt: Optional[Text] = Field(None, max_length=MAX_PROMPT_CHARS,
                                          description="the corrupted prompt; names swapped when omitted")
    metric: Literal["logit_diff", "prob"] = "logit_diff"
    token_a: Optional[int] = Field(None, ge=0, description="logit_diff: the correct token; prob: the token. "
                                                           "Omitted: the prompt's token where the two prompts "
                                                           "first differ")
    token_b: Optional[int] = Field(None, ge=0, description="logit_diff: the alternative token. Omitted (with "
                                                           "token_a): the corrupted prompt's token there")
    top_n: int = Field(8, ge=2, le=20, description="heads drawn: the largest verified effects")
    verify_k: Optional[int] = Field(None, ge=2, le=100000, description="heads verified by real patching, the "
                                                                       "largest attribution estimates first "
                                                                       "(at least top_n); all when omitted")


class PositionRequest(PromptRequest):
    position: Optional[int] = Field(None, ge=0, description="token position (0-based); the last when omitted")


class ModelViewRequest(PromptRequest):
    size: int = Field(24, ge=4, le=64, description="thumbnail side: a longer prompt's maps are max-pooled to "
                                                   "size x size")


class ModelViewResponse(BaseModel):
    tokens: list[TokenInfo]
    n_layers: int
    n_heads: int
    size: int = Field(description="side of each thumbnail: the prompt length, or size when pooled")
    pooled: bool = Field(description="true when each thumbnail cell is the maximum over a block of queries x keys")
    heads: list[list[Optional[list[list[float]]]]] = Field(
        description="[layer][head] thumbnail [query][key] of attention probabilities; null where a layer has "
                    "no attention")


class LogitLensRequest(PositionRequest):
    token_id: Optional[int] = Field(None, ge=0, description="a token whose probability and rank are reported "
                                                            "after every layer")
    top_k: int = Field(5, ge=1, le=20)


class LensTarget(BaseModel):
    id: int
    label: str
    prob: float
    rank: int = Field(description="1 = most likely")


class LensLayer(BaseModel):
    layer: int
    top: list[Candidate]
    target: Optional[LensTarget] = None


class LogitLensResponse(BaseModel):
    position: int
    token: TokenInfo = Field(description="the token at the position (the lens predicts the one after it)")
    layers: list[LensLayer]
    note: str


class AttributionRequest(PositionRequest):
    token_id: Optional[int] = Field(None, ge=0, description="the token whose logit is decomposed; the model's "
                                                            "most likely next token when omitted")


class AttributionPart(BaseModel):
    name: str
    kind: Literal["embedding", "attention_bias", "attention_extra", "mixer", "mlp", "mlp_extra", "final_bias"]
    layer: Optional[int] = None
    value: float = Field(description="contribution to the logit")


class AttributionTarget(Candidate):
    """The token whose logit is decomposed, with its probability at the position."""


class AttributionResponse(BaseModel):
    position: int
    token: TokenInfo = Field(description="the token at the position (the logit is for the one after it)")
    target: AttributionTarget
    logit: float = Field(description="the model's logit of the target token")
    pre_softcap_logit: float = Field(description="that logit before a final soft-cap (equal without one)")
    softcap: Optional[float] = None
    heads: list[list[Optional[float]]] = Field(description="[layer][head] direct contribution; null where a "
                                                           "layer has no attention")
    components: list[AttributionPart] = Field(description="every other part: embeddings, MLPs, biases, mixers")
    total: float = Field(description="sum of the heads and the other parts")
    error: float = Field(description="|total - pre_softcap_logit|")
    note: str


class JobStarted(BaseModel):
    job_id: int
    status: str
    queued_ahead: int


class JobState(BaseModel):
    id: int
    kind: str
    status: str
    params: dict
    n_events: int
    last_event: Optional[dict] = None
    result: Optional[dict] = None
    error: Optional[str] = None


class ModelInfo(BaseModel):
    name: str
    n_layers: int
    n_heads: int
    attention_layers: list[int] = Field(description="the layers with attention heads (a hybrid's others have none)")
    n_kv_heads: int
    vocab_size: int
    max_prompt_tokens: int
    max_jobs: int
    presets: dict[str, str]
    features: dict[str, bool]
