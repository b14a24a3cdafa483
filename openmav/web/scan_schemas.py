"""Response models of the corpus-scan API (``/api/scans/...``, :mod:`openmav.web.scans`).

Every number a scan stores may be missing (a statistic of a unit that never ran, a head score of a
neuron): those are ``null``, never NaN, so the answers are plain JSON.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

UnitKind = Literal["neuron", "head", "resid"]
SortBy = Literal["max", "density", "mean", "std"]
HeadSort = Literal["layer", "entropy", "max_weight", "first_weight", "prev_token", "induction", "mean", "max"]
Order = Literal["desc", "asc"]


class ScanInfo(BaseModel):
    """One scan the server was started with (``mav serve --scan DIR``)."""

    index: int = Field(description="the scan's number in /api/scans/{index}/...")
    folder: str
    model: str = Field(description="the model the scan was made with")
    same_model: bool = Field(description="whether that is the served model (the logit effect needs it)")
    data: str = Field(description="the corpus the scan read")
    tokens: Optional[int] = Field(None, description="token positions read")
    documents: Optional[int] = None
    layers: list[int]
    units: list[str] = Field(description="what was scanned: neurons, heads")
    top_k: int
    context: int = Field(description="tokens per window")
    neurons: dict[str, int] = Field(description="neurons per scanned layer, by layer number")
    heads: dict[str, int] = Field(description="heads per scanned layer, by layer number")


class UnitRow(BaseModel):
    kind: UnitKind
    layer: int
    unit: int
    count: int = Field(description="token positions read")
    mean: Optional[float] = None
    std: Optional[float] = None
    max: Optional[float] = None
    frac_pos: Optional[float] = Field(None, description="density: the fraction of positions above zero")


class HeadRow(BaseModel):
    """A head's corpus scores and the statistics of the norm of its own output."""

    layer: int
    head: int
    entropy: Optional[float] = Field(None, description="mean attention entropy (nats)")
    max_weight: Optional[float] = Field(None, description="mean of each query's largest weight")
    first_weight: Optional[float] = Field(None, description="mean weight on the first position")
    prev_token: Optional[float] = Field(None, description="mean weight on the previous position")
    induction: Optional[float] = Field(None, description="mean weight on the token after an earlier copy")
    mean: Optional[float] = Field(None, description="mean norm of the head's output")
    max: Optional[float] = Field(None, description="largest norm of the head's output")


class HistBin(BaseModel):
    lo: Optional[float] = Field(description="lower edge (null: open, -infinity)")
    hi: Optional[float] = Field(description="upper edge (null: open, +infinity)")
    label: str
    count: int


class ContextToken(BaseModel):
    id: int
    text: str
    value: Optional[float] = Field(description="the unit's value on this token (null: not recorded)")


class TopContext(BaseModel):
    rank: int = Field(description="0: the largest value")
    value: float
    token: str = Field(description="the hit token's text")
    token_id: int
    doc: int = Field(description="the document's ordinal in the corpus")
    source: Optional[str] = None
    char_start: int
    char_end: int
    hit_offset: int = Field(description="the hit's index in tokens")
    tokens: list[ContextToken]
    text: str = Field(description="the context's tokens joined: what 'open in the attention view' runs")


class UnitPage(BaseModel):
    summary: UnitRow
    scores: Optional[HeadRow] = Field(None, description="heads: the corpus head scores")
    histogram: list[HistBin] = Field(description="counts in the scan's fixed bins (signed log scale), "
                                                 "lowest bin first")
    contexts: list[TopContext]


class TokenMatch(BaseModel):
    token: str
    hits: int


class TokenUnit(BaseModel):
    kind: UnitKind
    layer: int
    unit: int
    hits: int = Field(description="how many of the unit's top-k hits fall on the token")
    max_value: float = Field(description="the largest value among those hits")


class TokenSearch(BaseModel):
    """The units whose top contexts fall most often on a token."""

    tokens: list[TokenMatch] = Field(description="the token texts that matched (the text as given, and with "
                                                 "a leading space where it had none)")
    units: list[TokenUnit]


class TokenEffect(BaseModel):
    id: int
    label: str
    value: float = Field(description="logit change per unit of activation")


class LogitEffect(BaseModel):
    """A neuron's direct effect on the logits: the tokens its output direction raises and lowers most."""

    layer: int
    unit: int
    top: list[TokenEffect]
    bottom: list[TokenEffect]
    applied: str = Field(description="what was applied to the neuron's output direction, in order")
