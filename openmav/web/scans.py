"""The corpus-scan endpoints of the explorer (``mav serve --scan DIR``): :func:`scan_router`.

Each scan is a finished scan folder (:class:`openmav.scan.query.Scan`); everything these endpoints
answer is a DuckDB query over its Parquet tables, except a neuron's direct effect on the logits, which
reads the served model's weights (:mod:`openmav.web.neuron_effect`) in the model's turn.  The routes:

- ``GET /api/scans``: the scans, with the model each was made with and what it holds;
- ``GET /api/scans/{i}/units``: units sorted by maximum, density, mean or standard deviation;
- ``GET /api/scans/{i}/heads``: every head's corpus scores, sorted;
- ``GET /api/scans/{i}/unit/{kind}/{layer}/{unit}``: one unit's statistics, histogram and top contexts;
- ``GET /api/scans/{i}/token?text=...``: which units fire most on a token;
- ``GET /api/scans/{i}/effect/{layer}/{unit}``: a neuron's top and bottom tokens through the unembedding;
- ``GET /vendor/plotly.js``: Plotly.js from the installed ``plotly`` package (the histogram's chart).

Bad input answers 422 with one line (the app's handlers), an unknown scan 404.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Optional

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from ..errors import InputError
from ..scan.plan import EDGES
from ..scan.query import Scan
from . import scan_schemas as T
from .schemas import ErrorResponse, Text

MAX_TOKEN_CHARS = 200
_ERR = {400: {"model": ErrorResponse, "description": "bad Host header (not this server)"},
        404: {"model": ErrorResponse, "description": "no such scan"},
        422: {"model": ErrorResponse, "description": "invalid input; the message names the valid range"}}
_MODEL_ERR = {**_ERR, 429: {"model": ErrorResponse, "description": "the model stayed busy too long"}}
HEAD_COLUMNS = ("entropy", "max_weight", "first_weight", "prev_token", "induction", "mean", "max")


def open_scans(scans: Iterable) -> list[Scan]:
    """Scan objects from scans or scan folders (one :class:`InputError` line for a folder that is not a
    finished scan)."""
    return [s if isinstance(s, Scan) else Scan(s) for s in scans]


def _num(x) -> Optional[float]:
    """A float for JSON: ``None`` for a missing or non-finite value."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _short(x: float) -> str:
    """An edge of the signed-log bins, readably: 0, 3.2e-3, 0.056, 1, 18, 5.6k."""
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        text = f"{float(f'{a / 1000:.2g}'):g}k"
    elif a >= 0.01:
        text = f"{float(f'{a:.2g}'):g}"
    else:
        mantissa, exp = f"{a:.1e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return ("−" if x < 0 else "") + text


def histogram_bins(counts) -> list[dict]:
    """The scan's histogram counts with their bins: bin ``i`` holds values in ``[EDGES[i-1], EDGES[i])``,
    the first and last bins open-ended."""
    edges = [float(e) for e in EDGES]
    out = []
    for i, count in enumerate(counts):
        lo = edges[i - 1] if i > 0 else None
        hi = edges[i] if i < len(edges) else None
        label = (f"below {_short(hi)}" if lo is None else f"{_short(lo)} and above" if hi is None
                 else f"{_short(lo)} to {_short(hi)}")
        out.append({"lo": lo, "hi": hi, "label": label, "count": int(count)})
    return out


def _layers(layers) -> str:
    """``0-11`` for consecutive layers, else ``0, 3, 5``."""
    layers = sorted(int(x) for x in layers)
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


def _rows(rel) -> list[dict]:
    names = [d[0] for d in rel.description]
    return [dict(zip(names, row)) for row in rel.fetchall()]


def _unit_row(row: dict) -> dict:
    return {"kind": row["kind"], "layer": int(row["layer"]), "unit": int(row["unit"]), "count": int(row["count"]),
            **{k: _num(row.get(k)) for k in ("mean", "std", "max", "frac_pos")}}


def _head_row(row: dict) -> dict:
    return {"layer": int(row["layer"]), "head": int(row.get("head", row.get("unit"))),
            **{k: _num(row.get(k)) for k in HEAD_COLUMNS}}


def _context(row: dict) -> dict:
    tokens = [{"id": int(i), "text": t, "value": _num(v)}
              for i, t, v in zip(row["context_ids"], row["context_tokens"], row["context_values"])]
    return {"rank": int(row["rank"]), "value": float(row["value"]), "token": row["token"] or "",
            "token_id": int(row["token_id"]), "doc": int(row["doc"]), "source": row.get("source"),
            "char_start": int(row["char_start"]), "char_end": int(row["char_end"]),
            "hit_offset": int(row["hit_offset"]), "tokens": tokens, "text": "".join(t["text"] for t in tokens)}


class ScanSet:
    """The server's scans, with what each holds counted once."""

    def __init__(self, scans: list[Scan], model_name: str):
        self.scans = scans
        self.model_name = model_name
        self._info: dict[int, dict] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> Scan:
        if not 0 <= index < len(self.scans):
            have = f"scans 0-{len(self.scans) - 1}" if self.scans else "no scans (start it with --scan DIR)"
            raise HTTPException(404, f"no scan {index}: this server has {have}")
        return self.scans[index]

    def info(self, index: int) -> dict:
        with self._lock:
            if index not in self._info:
                self._info[index] = self._describe(index)
            return self._info[index]

    def _describe(self, index: int) -> dict:
        scan = self.get(index)
        m, s = scan.manifest, scan.settings
        per_layer: dict[str, dict[str, int]] = {"neuron": {}, "head": {}}
        for kind, layer, n in scan.sql("SELECT kind, layer, count(*) FROM units WHERE kind IN ('neuron', 'head') "
                                       "GROUP BY kind, layer ORDER BY layer").fetchall():
            per_layer[kind][str(layer)] = int(n)
        docs = scan.sql("SELECT count(*) FROM documents").fetchone()[0]
        model = str(m.get("model", {}).get("name", "?"))
        return {"index": index, "folder": str(scan.folder), "model": model, "same_model": model == self.model_name,
                "data": str(m.get("data", {}).get("path", "?")), "tokens": m.get("tokens"), "documents": int(docs),
                "layers": [int(x) for x in s["layers"]], "units": list(s["units"]), "top_k": int(s["top_k"]),
                "context": int(s["context"]), "neurons": per_layer["neuron"], "heads": per_layer["head"]}


@lru_cache(maxsize=1)
def plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def scan_router(scans: Iterable, service, gate, wait_s: float = 120.0) -> APIRouter:
    """The scan endpoints over ``scans`` (:class:`Scan` objects or folders), for the explorer of
    ``service`` (its model's effects are computed holding ``gate``, waiting at most ``wait_s``)."""
    lm = service.lm
    box = ScanSet(open_scans(scans), lm.name)
    effects: dict[tuple[int, int], dict] = {}
    router = APIRouter()
    ScanIndex = PathParam(ge=0, le=10_000, description="the scan's number in /api/scans")

    @router.get("/api/scans", response_model=list[T.ScanInfo], responses={400: _ERR[400]})
    def list_scans():
        """The scans the server was started with (``mav serve --scan DIR``)."""
        return [box.info(i) for i in range(len(box.scans))]

    @router.get("/api/scans/{index}/units", response_model=list[T.UnitRow], responses=_ERR)
    def units(index: int = ScanIndex, kind: T.UnitKind = "neuron", by: T.SortBy = "max", order: T.Order = "desc",
              layer: Optional[int] = Query(None, ge=0, le=100_000, description="one layer (default: all)"),
              limit: int = Query(50, ge=1, le=5000)):
        """Units sorted by their maximum, density (fraction above zero), mean or standard deviation."""
        scan = box.get(index)
        if layer is not None and layer not in scan.settings["layers"]:
            raise InputError(f"layer {layer} was not scanned: the scan has layers {_layers(scan.settings['layers'])}")
        rows = scan.sort_units(by=by, kind=kind, layer=layer, limit=limit, descending=order == "desc")
        return [_unit_row(r) for r in rows]

    @router.get("/api/scans/{index}/heads", response_model=list[T.HeadRow], responses=_ERR)
    def heads(index: int = ScanIndex, by: T.HeadSort = "induction", order: T.Order = "desc",
              limit: int = Query(1000, ge=1, le=100_000)):
        """Every head's corpus scores and the statistics of its output's norm, sorted by one of them."""
        scan = box.get(index)
        direction = "DESC" if order == "desc" else "ASC"
        rel = scan.sql(f"SELECT layer, unit AS head, {', '.join(HEAD_COLUMNS)} FROM units WHERE kind = 'head' "
                       f"ORDER BY {by} {direction} NULLS LAST, layer, unit LIMIT {int(limit)}")
        return [_head_row(r) for r in _rows(rel)]

    @router.get("/api/scans/{index}/unit/{kind}/{layer}/{unit}", response_model=T.UnitPage, responses=_ERR)
    def unit_page(kind: T.UnitKind, layer: int = PathParam(ge=0, le=100_000),
                  unit: int = PathParam(ge=0, le=10_000_000), index: int = ScanIndex,
                  limit: int = Query(50, ge=1, le=1000, description="top contexts at most")):
        """One unit: its statistics, its histogram in the scan's fixed bins, and its top contexts (each
        token with the unit's value on it)."""
        scan = box.get(index)
        row = scan.summary(kind, layer, unit)
        limit = min(limit, int(scan.settings["top_k"]))  # the scan's top k, even where its table keeps more
        page = {"summary": _unit_row(row), "histogram": histogram_bins(row["hist"]),
                "contexts": [_context(r) for r in scan.top_contexts(kind, layer, unit, limit=limit)]}
        if kind == "head":
            page["scores"] = _head_row(row)
        return page

    @router.get("/api/scans/{index}/token", response_model=T.TokenSearch, responses=_ERR)
    def token(text: Text = Query(min_length=1, max_length=MAX_TOKEN_CHARS, description="the token's text"),
              index: int = ScanIndex, kind: T.UnitKind = "neuron",
              layer: Optional[int] = Query(None, ge=0, le=100_000), limit: int = Query(20, ge=1, le=1000)):
        """The units whose top-k hits fall most often on a token (its text as given, or with a leading
        space where it has none: ``the`` finds ``" the"`` too), with the largest value among those hits."""
        scan = box.get(index)
        if kind == "resid":
            raise InputError("kind must be neuron or head: a layer's residual norm has no top contexts by token")
        texts = [text] if text[:1].isspace() else [text, " " + text]
        top_k = int(scan.settings["top_k"])  # the scan's top k, even where its table keeps more
        where, params = "kind = ? AND token IN (SELECT unnest(?)) AND rank < ?", [kind, texts, top_k]
        if layer is not None:
            where += " AND layer = ?"
            params.append(layer)
        found = scan.sql(f"SELECT token, count(*) AS hits FROM top_contexts WHERE {where} GROUP BY token "
                         "ORDER BY hits DESC, token", params).fetchall()
        rel = scan.sql(f"SELECT kind, layer, unit, count(*) AS hits, max(value) AS max_value FROM top_contexts "
                       f"WHERE {where} GROUP BY kind, layer, unit ORDER BY hits DESC, max_value DESC, layer, unit "
                       f"LIMIT {int(limit)}", params)
        return {"tokens": [{"token": t, "hits": int(n)} for t, n in found],
                "units": [{**r, "max_value": float(r["max_value"])} for r in _rows(rel)]}

    @router.get("/api/scans/{index}/effect/{layer}/{unit}", response_model=T.LogitEffect, responses=_MODEL_ERR)
    def effect(layer: int = PathParam(ge=0, le=100_000), unit: int = PathParam(ge=0, le=10_000_000),
               index: int = ScanIndex, k: int = Query(10, ge=1, le=100)):
        """A neuron's direct effect on the logits: its column of the down projection, through the final norm's
        elementwise weight and the unembedding; the ``k`` tokens it raises most and the ``k`` it lowers most."""
        info = box.info(index)
        if not info["same_model"]:
            raise InputError(f"scan {index} was made with {info['model']}, but the served model is {lm.name}: "
                             f"its neurons are not this model's (serve it with --model {info['model']})")
        box.get(index).summary("neuron", layer, unit)  # a neuron of this scan, or one 422 line
        found = effects.get((layer, unit))
        if found is None:
            from .neuron_effect import neuron_logit_effect

            with gate.hold("a neuron's logit effect", timeout=wait_s):
                found = neuron_logit_effect(lm, layer, unit, k=100)
            if len(effects) > 4096:
                effects.clear()
            effects[(layer, unit)] = found

        def tokens(pairs):
            return [{"id": i, "label": service.label(i), "value": v} for i, v in pairs[:k]]

        return {"layer": layer, "unit": unit, "top": tokens(found["top"]), "bottom": tokens(found["bottom"]),
                "applied": found["applied"]}

    @router.get("/vendor/plotly.js", include_in_schema=False)
    def plotly():
        """Plotly.js as the installed ``plotly`` package ships it: no CDN."""
        return Response(plotly_js(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    return router


__all__ = ["histogram_bins", "open_scans", "scan_router"]
