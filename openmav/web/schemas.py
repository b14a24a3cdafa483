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
    pass


class StudyRequest(PromptRequest, AblationShape):
    mode: Literal["generic", "targeted"] = "generic"
    target_id: Optional[int] = Field(None, ge=0, description="targeted: the token to make the most likely")
    max_heads: int = Field(5, ge=1, le=20)
    candidates: int = Field(20, ge=1, le=200)


class CircuitRequest(PromptRequest):
    corrupt_prompt: Optional[Text] = Field(None, max_length=MAX_PROMPT_CHARS,
                                          description="the corrupted prompt; names swapped when omitted")
    metric: Literal["logit_diff", "prob"] = "logit_diff"
    token_a: int = Field(ge=0, description="logit_diff: the correct token; prob: the token")
    token_b: Optional[int] = Field(None, ge=0, description="logit_diff: the alternative token")
    top_n: int = Field(8, ge=2, le=20)


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
    n_kv_heads: int
    vocab_size: int
    max_prompt_tokens: int
    max_jobs: int
    presets: dict[str, str]
    features: dict[str, bool]
