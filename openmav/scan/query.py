"""Read a finished scan: the common questions answered with DuckDB over the scan's Parquet tables.

``openmav.scan.open(DIR)`` returns a :class:`Scan`.  The tables are plain Parquet files
(``DIR/units.parquet`` and the others, see :mod:`openmav.scan.tables`), so pandas
(``pd.read_parquet``), polars or DuckDB open them as they are; :meth:`Scan.sql` runs any DuckDB query
with the tables as views named ``units``, ``top_contexts``, ``documents`` and ``vocab``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import InputError
from ..rules import Number, check_text
from .store import read_manifest

TABLES = ("units", "top_contexts", "documents", "vocab")
KINDS = ("neuron", "head", "resid")
SORTS = {"max": "max", "density": "frac_pos", "mean": "mean", "std": "std"}


def open_scan(folder) -> "Scan":
    """The finished scan in ``folder`` (one :class:`InputError` line if it is not one)."""
    return Scan(folder)


class Scan:
    """A finished scan folder; every method is one DuckDB query (a connection per thread)."""

    def __init__(self, folder):
        if not isinstance(folder, (str, Path)) or not str(folder):
            raise InputError("give the scan folder")
        self.folder = Path(folder).expanduser()
        manifest = read_manifest(self.folder) if self.folder.is_dir() else None
        if manifest is None:
            raise InputError(f"{folder} is not a scan folder (no manifest.json): make one with mav scan")
        if not manifest.get("complete"):
            raise InputError(f"the scan in {folder} is not finished: continue it with mav scan --resume")
        self.manifest = manifest
        self._local = threading.local()

    def __repr__(self) -> str:
        s = self.manifest["settings"]
        return (f"Scan({str(self.folder)!r}: {self.manifest['model']['name']} over {self.manifest.get('tokens')} tokens "
                f"of {self.manifest['data']['path']}, layers {s['layers'][0]}-{s['layers'][-1]}, "
                f"{'+'.join(s['units'])}, top {s['top_k']})")

    @property
    def settings(self) -> dict:
        return dict(self.manifest["settings"])

    def path(self, table: str) -> Path:
        if table not in TABLES:
            raise InputError(f"unknown table {table!r}: the scan has {', '.join(TABLES)}")
        return self.folder / f"{table}.parquet"

    @property
    def db(self):
        con = getattr(self._local, "con", None)
        if con is None:
            import duckdb

            con = duckdb.connect()
            for table in TABLES:
                path = str(self.path(table)).replace("'", "''")
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
            self._local.con = con
        return con

    def sql(self, query: str, params=None):
        """Run a DuckDB query over the views ``units``, ``top_contexts``, ``documents``, ``vocab``; a relation
        (``.df()``, ``.fetchall()``, ``.arrow()``)."""
        check_text("query", query, allow_empty=False)
        return self.db.execute(query, params or [])

    def table(self, name: str):
        """A whole table as a pandas DataFrame."""
        return self.sql(f"SELECT * FROM {self.path(name).stem}").df()

    # --- the common questions ---------------------------------------------------------------------------------------

    def _unit_args(self, kind: str, layer, unit) -> tuple[str, int, int]:
        if kind not in KINDS:
            raise InputError(f"unknown unit kind {kind!r}: use {', '.join(KINDS)}")
        layers = self.manifest["settings"]["layers"]
        Number(int, 0, 10**9).check("layer", layer)
        if layer not in layers:
            raise InputError(f"layer {layer} was not scanned: the scan has layers {_ranges(layers)}")
        Number(int, 0, 10**9).check("unit", unit)
        return kind, int(layer), int(unit)

    def summary(self, kind: str, layer: int, unit: int) -> dict:
        """One unit's row of ``units`` as a dict (statistics, histogram, head scores)."""
        args = self._unit_args(kind, layer, unit)
        rel = self.sql("SELECT * FROM units WHERE kind = ? AND layer = ? AND unit = ?", list(args))
        row = rel.fetchone()
        if row is None:
            n = self.sql("SELECT count(*) FROM units WHERE kind = ? AND layer = ?", list(args[:2])).fetchone()[0]
            raise InputError(f"no {kind} {unit} in layer {layer}: it has {n} ({kind} 0 to {n - 1})" if n else
                             f"layer {layer} has no {kind}s in this scan")
        return dict(zip([d[0] for d in rel.description], row))

    def top_contexts(self, kind: str, layer: int, unit: int, limit: int | None = None) -> list[dict]:
        """A unit's top-k hits, best first, each with its context (token texts and the unit's values)."""
        args = self._unit_args(kind, layer, unit)
        if limit is not None:
            Number(int, 1, 10**6).check("limit", limit)
        rel = self.sql("SELECT t.*, d.source FROM top_contexts t LEFT JOIN documents d ON d.doc = t.doc "
                       "WHERE t.kind = ? AND t.layer = ? AND t.unit = ? ORDER BY t.rank"
                       + (f" LIMIT {int(limit)}" if limit else ""), list(args))
        names = [d[0] for d in rel.description]
        rows = [dict(zip(names, row)) for row in rel.fetchall()]
        ids = sorted({i for row in rows for i in row["context_ids"]})
        texts = dict(self.sql("SELECT token_id, text FROM vocab WHERE token_id IN (SELECT unnest(?))",
                              [ids]).fetchall()) if ids else {}
        for row in rows:
            row["context_tokens"] = [texts.get(i, "") for i in row["context_ids"]]
        return rows

    def fire_on_token(self, token, kind: str = "neuron", layer: int | None = None, limit: int = 20) -> list[dict]:
        """The units whose top-k hits fall most often on ``token`` (its text, e.g. ``" the"``, or its id),
        with the count of such hits and the largest value among them."""
        if kind not in KINDS[:2]:
            raise InputError(f"unknown unit kind {kind!r}: use neuron or head")
        Number(int, 1, 10**6).check("limit", limit)
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            raise InputError(f"token must be text or a token id, got {type(token).__name__}")
        where, params = ("token_id = ?", [int(token)]) if isinstance(token, int) else ("token = ?", [token])
        if isinstance(token, str):
            check_text("token", token)  # a token may be whitespace alone (" ", "\n")
            if not token:
                raise InputError("token is empty: give a token's text or its id")
        if layer is not None:
            Number(int, 0, 10**9).check("layer", layer)
            where += " AND layer = ?"
            params.append(int(layer))
        rel = self.sql(f"SELECT kind, layer, unit, count(*) AS hits, max(value) AS max_value FROM top_contexts "
                       f"WHERE kind = ? AND {where} GROUP BY kind, layer, unit ORDER BY hits DESC, max_value DESC, "
                       f"layer, unit LIMIT {int(limit)}", [kind, *params])
        names = [d[0] for d in rel.description]
        return [dict(zip(names, row)) for row in rel.fetchall()]

    def sort_units(self, by: str = "max", kind: str = "neuron", layer: int | None = None, limit: int = 50,
                   descending: bool = True) -> list[dict]:
        """Units ordered by ``max``, ``density`` (fraction above zero), ``mean`` or ``std``."""
        if by not in SORTS:
            raise InputError(f"cannot sort by {by!r}: use {', '.join(SORTS)}")
        if kind not in KINDS:
            raise InputError(f"unknown unit kind {kind!r}: use {', '.join(KINDS)}")
        Number(int, 1, 10**7).check("limit", limit)
        where, params = "kind = ?", [kind]
        if layer is not None:
            Number(int, 0, 10**9).check("layer", layer)
            where += " AND layer = ?"
            params.append(int(layer))
        rel = self.sql(f"SELECT kind, layer, unit, count, mean, std, max, frac_pos FROM units WHERE {where} "
                       f"ORDER BY {SORTS[by]} {'DESC' if descending else 'ASC'}, layer, unit LIMIT {int(limit)}",
                       params)
        names = [d[0] for d in rel.description]
        return [dict(zip(names, row)) for row in rel.fetchall()]

    def heads(self, by: str = "induction", limit: int = 50) -> list[dict]:
        """Heads ordered by a corpus head score (``induction``, ``prev_token``, ``entropy``, ``max_weight``,
        ``first_weight``) or a statistic of their output norm (``max``, ``mean``)."""
        allowed = ("induction", "prev_token", "entropy", "max_weight", "first_weight", "max", "mean")
        if by not in allowed:
            raise InputError(f"cannot sort heads by {by!r}: use {', '.join(allowed)}")
        Number(int, 1, 10**7).check("limit", limit)
        rel = self.sql(f"SELECT layer, unit AS head, mean, std, max, entropy, max_weight, first_weight, prev_token, "
                       f"induction FROM units WHERE kind = 'head' ORDER BY {by} DESC NULLS LAST, layer, unit "
                       f"LIMIT {int(limit)}")
        names = [d[0] for d in rel.description]
        return [dict(zip(names, row)) for row in rel.fetchall()]


def _ranges(values) -> str:
    values = sorted(values)
    out, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)
