"""Corpus scans against an independent recomputation, on every declared family.

The recomputation shares nothing with :mod:`openmav.scan` but the model's parts: it packs the documents
into windows itself, runs each window alone through an uncached forward in eager attention with
``output_attentions``, reads the neurons, the heads' inputs to the output projection and the blocks'
outputs with plain hooks, projects each head through the output projection with every other head zeroed,
and computes every statistic with numpy in float64.
"""

from __future__ import annotations

import copy
import json
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import openmav
from openmav.errors import InputError
from openmav.scan.plan import AFTER, BEFORE, EDGES
from test_families import DECLARED

CONTEXT, TOP_K = 32, 3


def stdlib_docs(n: int = 6, start: int = 0) -> list[str]:
    """Paragraphs of the standard library's own source (real text nobody here wrote)."""
    text = Path(textwrap.__file__).read_text(encoding="utf-8")
    paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    return paras[start:start + n]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc}) + "\n")
    return path


def pack(tokenizer, docs, context):
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids, meta = [], []
    for d, text in enumerate(docs):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if sep is not None:
            ids.append(sep)
            meta.append((d, 0, 0))
        ids += enc["input_ids"]
        meta += [(d, a, b) for a, b in enc["offset_mapping"]]
    return [(ids[i:i + context], meta[i:i + context]) for i in range(0, len(ids), context)]


@contextmanager
def eager_attention(model):
    """``model`` in eager attention for the duration, and back.

    ``set_attn_implementation`` only logs a warning on a model outside transformers' attention-function registry
    (Falcon before transformers 5.25), leaving the config at ``sdpa``: its mask is then built for SDPA (boolean),
    while ``output_attentions`` takes the module's eager branch, which adds that mask to the scores (True as 1, False
    as 0): nothing is masked and every query sees later keys.  Such a model reads the configs'
    ``_attn_implementation`` field at run time: set it on every config when the switch did not take."""
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
               if c is not None and hasattr(c, "_attn_implementation")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    model.set_attn_implementation("eager")
    if model.config._attn_implementation != "eager":
        for c in configs.values():
            c._attn_implementation = "eager"
    assert model.config._attn_implementation == "eager"
    try:
        yield
    finally:
        model.set_attn_implementation(before[id(model.config)])
        for key, c in configs.items():
            c._attn_implementation = before[key]


def recompute(lm, windows, layers):
    """Per group (``neuron/l``, ``head/l``, ``resid/l``) every value ``[tokens, units]`` with its global token index,
    and per head layer the attention patterns of every window."""
    p = lm.parts
    values: dict[str, list] = {}
    patterns: dict[int, list] = {layer: [] for layer in layers}
    keys = []
    for w, (ids, _) in enumerate(windows):
        seen = {}
        hooks = []
        for layer in layers:
            if p.down_proj[layer] is not None:
                hooks.append(p.down_proj[layer].register_forward_pre_hook(
                    lambda m, a, layer=layer: seen.__setitem__(("neuron", layer), a[0].reshape(-1, a[0].shape[-1]).detach().clone())))
            if p.o_proj[layer] is not None and p.attn[layer] is not None:
                hooks.append(p.o_proj[layer].register_forward_pre_hook(
                    lambda m, a, layer=layer: seen.__setitem__(("z", layer), a[0].reshape(-1, a[0].shape[-1]).detach().clone())))
            hooks.append(p.blocks[layer].register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(("resid", layer), (o[0] if isinstance(o, tuple) else o)[0]
                                                             .detach().clone())))
        try:
            with torch.no_grad(), eager_attention(lm.model):
                out = lm.model(input_ids=torch.tensor([ids]), use_cache=False, output_attentions=True)
        finally:
            for h in hooks:
                h.remove()
        keys += [w * CONTEXT + t for t in range(len(ids))]
        for layer in layers:
            if ("neuron", layer) in seen:
                values.setdefault(f"neuron/{layer}", []).append(seen[("neuron", layer)].double().reshape(len(ids), -1))
            if ("z", layer) in seen:
                z = seen[("z", layer)].double()
                o = copy.deepcopy(p.o_proj[layer]).double()
                H, d = p.n_heads, p.head_dim
                with torch.no_grad():
                    zero = o(torch.zeros_like(z))
                norms = []
                with torch.no_grad():
                    for h in range(H):
                        only = torch.zeros_like(z)
                        only[:, h * d:(h + 1) * d] = z[:, h * d:(h + 1) * d]
                        norms.append(torch.linalg.vector_norm(o(only) - zero, dim=-1))
                values.setdefault(f"head/{layer}", []).append(torch.stack(norms, -1))
                pattern = out.attentions[layer][0].double()
                assert not pattern.triu(1).any(), f"layer {layer}: the recomputation's queries see later keys"
                patterns[layer].append((pattern, ids))
            values.setdefault(f"resid/{layer}", []).append(
                torch.linalg.vector_norm(seen[("resid", layer)].double(), dim=-1, keepdim=True))
    return {g: torch.cat(v).numpy() for g, v in values.items()}, np.array(keys), patterns


def head_scores(patterns):
    """Corpus means per head: entropy, max, first, previous-token over queries >= 1; induction over queries with
    an earlier copy of their token (key j+1 for token j == token i, j+1 < i)."""
    sums, count, ind, ind_count = 0, 0, 0, 0
    for a, ids in patterns:
        H, q, _ = a.shape
        rows = a[:, 1:, :]
        ent = -(rows * torch.log(rows.clamp_min(1e-300))).sum(-1)
        i = torch.arange(1, q)
        sums = sums + torch.stack([ent.sum(-1), rows.amax(-1).sum(-1), rows[..., 0].sum(-1), a[:, i, i - 1].sum(-1)])
        count += q - 1
        for qi in range(q):
            ks = [j + 1 for j in range(qi - 1) if ids[j] == ids[qi]]
            if ks:
                ind = ind + a[:, qi, ks].sum(-1)
                ind_count += 1
    return (sums / count).numpy(), (ind / ind_count).numpy() if ind_count else None


def exact_top(values, keys, k):
    """Per unit the k best (value desc, key asc)."""
    out = []
    for u in range(values.shape[1]):
        order = np.lexsort((keys, -values[:, u]))[:k]
        out.append((values[order, u], keys[order]))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = stdlib_docs()
    return docs, write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", docs)


def check_scan_against_recomputation(lm, docs, folder):
    scan = openmav.scan.open(folder)
    layers = scan.settings["layers"]
    windows = pack(lm.tokenizer, docs, CONTEXT)
    values, keys, patterns = recompute(lm, windows, layers)
    units = scan.table("units")
    tops = scan.table("top_contexts")
    checked = 0
    for group, v in values.items():
        kind, layer = group.split("/")
        rows = units[(units.kind == kind) & (units.layer == int(layer))].sort_values("unit")
        assert len(rows) == v.shape[1], group
        assert (rows["count"] == len(v)).all(), group
        scale = max(1.0, float(np.abs(v).max()))
        np.testing.assert_allclose(rows["mean"], v.mean(0), atol=1e-4 * scale, err_msg=group)
        np.testing.assert_allclose(rows["std"], v.std(0), atol=1e-4 * scale, err_msg=group)
        np.testing.assert_allclose(rows["max"], v.max(0), atol=1e-4 * scale, err_msg=group)
        near_zero = (np.abs(v) < 1e-5).sum(0)
        assert (np.abs(np.round(rows["frac_pos"] * len(v)) - (v > 0).sum(0)) <= near_zero).all(), group
        hist = np.stack(rows["hist"].to_numpy())
        expected = np.stack([np.histogram(v[:, u], np.concatenate([[-np.inf], EDGES, [np.inf]]))[0]
                             for u in range(v.shape[1])])
        near_edge = np.stack([(np.abs(v[:, u, None] - EDGES[None]) < 1e-5 * scale).sum() for u in range(v.shape[1])])
        assert (hist.sum(1) == len(v)).all(), group
        assert (np.abs(hist - expected).sum(1) <= 2 * near_edge).all(), group
        if kind == "resid":
            continue
        got = tops[(tops.kind == kind) & (tops.layer == int(layer))]
        for u, (best_vals, best_keys) in enumerate(exact_top(v, keys, TOP_K)):
            hits = got[got.unit == u].sort_values("rank")
            np.testing.assert_allclose(hits["value"], best_vals, atol=1e-4 * scale, err_msg=f"{group} unit {u}")
            gaps = np.abs(np.diff(np.concatenate([[np.inf], np.sort(v[:, u])[::-1][:TOP_K + 1]])))
            for rank, (key, hit) in enumerate(zip(best_keys, hits.itertuples())):
                if gaps[rank] > 1e-4 * scale and gaps[rank + 1] > 1e-4 * scale:  # no near-tie: the same position
                    assert hit.token_index == key, (group, u, rank)
                w, t = divmod(int(hit.token_index), CONTEXT)
                ids, meta = windows[w]
                assert hit.token_id == ids[t] and (hit.doc, hit.char_start, hit.char_end) == meta[t]
                start = max(0, t - BEFORE)
                assert list(hit.context_ids) == ids[start:t + AFTER + 1]
                where = np.searchsorted(keys, w * CONTEXT + start)
                expect = v[where:where + len(hit.context_ids), u]
                np.testing.assert_allclose(hit.context_values, expect, atol=2e-3 * max(1.0, np.abs(expect).max()),
                                           err_msg=f"{group} unit {u} context")  # kept as float16
                assert hit.hit_offset == t - start
                checked += 1
        if kind == "head":
            means, induction = head_scores(patterns[int(layer)])
            for i, name in enumerate(("entropy", "max_weight", "first_weight", "prev_token")):
                np.testing.assert_allclose(rows[name], means[i], atol=1e-4, err_msg=f"{group} {name}")
            if induction is not None:
                np.testing.assert_allclose(rows["induction"], induction, atol=1e-4, err_msg=f"{group} induction")
    assert checked > 0
    for hit in tops.head(20).itertuples():  # every hit points back to its document's text
        if hit.char_end > hit.char_start:
            piece = docs[hit.doc][hit.char_start:hit.char_end]
            assert piece.strip() in lm.tokenizer.decode([hit.token_id]), (piece, hit.token)


@pytest.mark.parametrize("model_type", DECLARED)
def test_scan_equals_recomputation_on_every_declared_family(tiny, corpus, tmp_path, model_type):
    lm = tiny(model_type)
    docs, path = corpus
    units = "neurons,heads"
    if all(m is None for m in lm.parts.down_proj):  # experts only, or no down projection named: said in one line
        with pytest.raises(InputError, match="no per-neuron MLP input"):
            openmav.scan(lm, path, tmp_path / "refused", context=CONTEXT)
        units = "heads"
    openmav.scan(lm, path, tmp_path / "scan", context=CONTEXT, top_k=TOP_K, batch_size=8, shard_batches=3,
                 units=units)
    check_scan_against_recomputation(lm, docs, tmp_path / "scan")


def table_bytes(folder: Path) -> dict:
    import pyarrow.parquet as pq

    return {name: pq.read_table(folder / f"{name}.parquet") for name in ("units", "top_contexts", "documents",
                                                                        "vocab")}


def test_any_sharding_gives_the_same_tables(tiny, corpus, tmp_path):
    lm = tiny("llama")
    _, path = corpus
    results = []
    for shard_batches in (1, 2, 5, 100):
        out = tmp_path / f"s{shard_batches}"
        openmav.scan(lm, path, out, context=CONTEXT, top_k=TOP_K, batch_size=2, shard_batches=shard_batches)
        results.append(table_bytes(out))
    for other in results[1:]:
        for name, table in results[0].items():
            assert table.equals(other[name]), name


def test_resume_after_losing_shards_in_any_order_gives_the_same_tables(tiny, corpus, tmp_path):
    """Shards are computed in another order when a resumed scan redoes the ones that were lost."""
    lm = tiny("llama")
    _, path = corpus
    whole = tmp_path / "whole"
    openmav.scan(lm, path, whole, context=CONTEXT, top_k=TOP_K, batch_size=2, shard_batches=1)
    manifest = json.loads((whole / "manifest.json").read_text())
    for index in list(manifest["shards"])[1::2]:  # drop every other shard, as a kill would leave them
        del manifest["shards"][index]
        (whole / "shards" / f"{int(index):06d}.npz").unlink()
    manifest["complete"] = False
    (whole / "manifest.json").write_text(json.dumps(manifest))
    expected = table_bytes(tmp_path / "whole")
    again = tmp_path / "again"
    openmav.scan(lm, path, again, context=CONTEXT, top_k=TOP_K, batch_size=2, shard_batches=1)
    openmav.scan(lm, path, whole, context=CONTEXT, top_k=TOP_K, batch_size=2, resume=True)
    for name, table in table_bytes(whole).items():
        assert table.equals(table_bytes(again)[name]), name
    del expected


def test_merges_are_exact_in_any_grouping_and_order():
    from openmav.scan.merge import BlockTree, TopK

    rng = np.random.default_rng(0)
    leaves = [{"g": {"n": np.int64(7), "mean": rng.normal(size=5), "m2": rng.random(5) * 3,
                     "max": rng.normal(size=5).astype(np.float32), "hist": rng.integers(0, 9, (5, 4)),
                     "sum_x": rng.normal(size=5)}} for _ in range(23)]
    totals = []
    for trial in range(6):
        cuts = sorted(rng.choice(np.arange(1, 23), size=trial, replace=False).tolist())
        pieces = [list(range(a, b)) for a, b in zip([0] + cuts, cuts + [23])]
        parts = []
        for piece in pieces:
            tree = BlockTree()
            for i in rng.permutation(piece):
                tree.add_batch(int(i), leaves[i])
            parts.append(tree)
        whole = BlockTree()
        for j in rng.permutation(len(parts)):
            whole.merge(parts[j])
        totals.append(whole.total()["g"])
    for other in totals[1:]:
        for key in totals[0]:
            assert np.array_equal(totals[0][key], other[key]), key
    n = 7 * 23
    assert totals[0]["n"] == n

    values = rng.normal(size=(3, 40)).astype(np.float32)
    values[:, 5] = values[:, 9] = values[:, 1]  # ties: the earlier key wins
    keys = np.tile(np.arange(40), (3, 1))
    results = []
    for trial in range(5):
        top = TopK(3, 4)
        for chunk in np.array_split(rng.permutation(40), trial + 1):
            top.offer(values[:, chunk], keys[:, chunk], {})
        results.append((top.values.copy(), top.keys.copy()))
    for v, k in results:
        assert np.array_equal(v, results[0][0]) and np.array_equal(k, results[0][1])
    for u in range(3):
        order = np.lexsort((keys[u], -values[u]))[:4]
        assert np.array_equal(results[0][1][u], keys[u, order])


def test_flat_offers_equal_padded_offers_and_the_exact_top_k():
    """The reader's one-entry-per-candidate merge keeps what the padded merge keeps, contexts included, and both
    keep each unit's k best (value descending, earlier key first) over everything offered."""
    from openmav.scan.merge import TopK

    rng = np.random.default_rng(3)
    for trial in range(200):
        units, k = 6, int(rng.integers(1, 6))
        flat, padded = TopK(units, k, {"c": ((2,), np.float16)}), TopK(units, k, {"c": ((2,), np.float16)})
        keys_left = rng.permutation(10_000)
        seen = []
        for step in range(5):
            c = int(rng.integers(0, 15))
            unit = rng.integers(0, units, c)
            value = rng.integers(-2, 3, c).astype(np.float32)  # few distinct values: many ties
            key = keys_left[step * 20:step * 20 + c].astype(np.int64)
            order = np.lexsort((key, -value, unit))
            unit, value, key = unit[order], value[order], key[order]
            extra = rng.normal(size=(c, 2)).astype(np.float16)
            flat.offer_flat(unit, value, key, {"c": extra})
            v = np.full((units, c), -np.inf, np.float32)
            kk = np.full((units, c), np.iinfo(np.int64).max)
            e = np.full((units, c, 2), np.nan, np.float16)
            v[unit, np.arange(c)], kk[unit, np.arange(c)], e[unit, np.arange(c)] = value, key, extra
            padded.offer(v, kk, {"c": e})
            seen += list(zip(unit, value, key))
            assert np.array_equal(flat.values, padded.values) and np.array_equal(flat.keys, padded.keys), trial
            filled = np.isfinite(flat.values)
            assert np.array_equal(flat.extra["c"][filled], padded.extra["c"][filled]), trial
        for u in range(units):
            best = sorted((-val, key) for unit_, val, key in seen if unit_ == u)[:k]
            assert [key for _, key in best] == flat.keys[u][:len(best)].tolist()


def test_octave_bins_and_positive_counts_at_the_edges():
    """Signed zeros, subnormals, exact powers of two at both ends and beyond them fall where the bins say."""
    from openmav.scan.reduce import count_positive, histogram

    special = [0.0, -0.0, 1e-40, -1e-40, 2.0 ** -11, -(2.0 ** -11), 2.0 ** -10, -(2.0 ** -10), 2.0 ** -9.5, 1.0,
               -1.0, 1.5, 2.0 ** 13, 2.0 ** 14, -(2.0 ** 14), 3e38, -3e38, float("inf"), float("-inf")]
    x = torch.tensor(special, dtype=torch.float32)[:, None]
    magnitude = np.abs(np.array(special, dtype=np.float64))
    octave = np.where(magnitude < 2.0 ** -10, 0,
                      np.minimum(np.floor(np.log2(np.maximum(magnitude, 1e-300))) + 11, 25)).astype(int)
    center = len(EDGES) // 2
    expected = np.zeros(len(EDGES) + 1, dtype=np.int64)
    for value, step in zip(special, octave):
        expected[center - step if np.signbit(value) else center + step] += 1
    assert histogram(x)[0].tolist() == expected.tolist()
    assert count_positive(x).tolist() == [sum(v > 0 for v in special)]


def test_octave_counts_per_unit_with_and_without_zeros():
    """Units whose values hold +0.0, subnormals, NaN or infinities are counted exactly beside units that hold none
    (the count above zero is read off the exponent codes only where no such value is)."""
    from openmav.scan.reduce import histogram, octave_counts

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((300, 40)) * np.exp2(rng.integers(-14, 16, (300, 40)))).astype(np.float32)
    x[:, :8] = np.maximum(x[:, :8], 0)  # ReLU-like units: many +0.0
    x[5, 9], x[6, 10], x[7, 11], x[8, 12], x[9, 13] = np.nan, np.inf, -np.inf, 1e-40, -0.0
    t = torch.from_numpy(x)
    _, above = octave_counts(t)
    assert above.tolist() == (x > 0).sum(0).tolist()
    bins = np.concatenate([[-np.inf], EDGES, [np.inf]])
    finite = np.isfinite(x)
    for u in range(x.shape[1]):
        expected = np.histogram(x[finite[:, u], u], bins)[0]
        got = histogram(t[:, u:u + 1])[0] - (histogram(t[~torch.from_numpy(finite[:, u]), u:u + 1])[0]
                                            if not finite[:, u].all() else 0)
        assert got.tolist() == expected.tolist(), u
    assert (histogram(t).sum(1) == 300).all()


def test_queries(tiny, corpus, tmp_path):
    lm = tiny("llama")
    _, path = corpus
    scan = openmav.scan(lm, path, tmp_path / "q", context=CONTEXT, top_k=TOP_K, batch_size=4)
    units = scan.table("units")
    best = scan.sort_units("max", kind="neuron", limit=3)
    assert [b["max"] for b in best] == sorted(units[units.kind == "neuron"]["max"], reverse=True)[:3]
    dense = scan.sort_units("density", kind="neuron", layer=1, limit=1)[0]
    assert dense["frac_pos"] == units[(units.kind == "neuron") & (units.layer == 1)]["frac_pos"].max()
    summary = scan.summary("neuron", best[0]["layer"], best[0]["unit"])
    assert summary["max"] == best[0]["max"] and len(summary["hist"]) == len(EDGES) + 1
    hits = scan.top_contexts("neuron", best[0]["layer"], best[0]["unit"])
    assert hits[0]["value"] == pytest.approx(best[0]["max"]) and len(hits) == TOP_K
    assert hits[0]["context_tokens"][hits[0]["hit_offset"]] == hits[0]["token"]
    token = hits[0]["token"]
    fired = scan.fire_on_token(token, limit=50)
    assert any(f["layer"] == best[0]["layer"] and f["unit"] == best[0]["unit"] for f in fired)
    tops = scan.table("top_contexts")
    assert all(f["hits"] == ((tops.kind == "neuron") & (tops.token == token) & (tops.layer == f["layer"])
                             & (tops.unit == f["unit"])).sum() for f in fired)
    heads = scan.heads("induction", limit=2)
    assert heads[0]["induction"] >= heads[1]["induction"]
    assert scan.sql("SELECT count(*) FROM documents").fetchone()[0] == len(stdlib_docs())
    with pytest.raises(InputError, match="layer 7 was not scanned"):
        scan.summary("neuron", 7, 0)
    with pytest.raises(InputError, match="cannot sort by"):
        scan.sort_units("bogus")


def test_bad_input_is_one_line_before_the_model_loads(tmp_path, corpus):
    _, path = corpus

    def refused(match, **kwargs):
        args = {"model": "no-such-model-anywhere", "data": path, "out": tmp_path / "o"}
        args.update(kwargs)
        with pytest.raises(InputError, match=match):
            openmav.scan(**args)

    refused("no data at", data=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    refused("is empty", data=tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    refused("looks binary", data=tmp_path / "bin.txt")
    refused("no text field 'body'", text_field="body")
    refused("--layers: 'x' is not a layer", layers="0,x")
    refused("neurons, heads", units="neurons,mlp")
    refused("context must be at least 2", context=1)
    refused("top_k must be", top_k=0)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"x")
    refused("holds no .txt, .md, .py files", data=tmp_path / "folder")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    refused("holds other files, not a scan", out=tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


def test_refusals_that_need_the_model(tiny, corpus, tmp_path):
    lm = tiny("llama")
    _, path = corpus
    with pytest.raises(InputError, match=r"--layers: 5 out of range: tiny-llama has layers 0 to 1"):
        openmav.scan(lm, path, tmp_path / "a", layers="0,5")
    with pytest.raises(InputError, match="longer than tiny-llama's context of 512"):
        openmav.scan(lm, path, tmp_path / "a", context=513)
    out = tmp_path / "s"
    openmav.scan(lm, path, out, context=CONTEXT, top_k=TOP_K, max_tokens=200)
    with pytest.raises(InputError, match="already holds a complete scan: pass --resume"):
        openmav.scan(lm, path, out, context=CONTEXT, top_k=TOP_K, max_tokens=200)
    with pytest.raises(InputError, match=r"differs in top_k \(3 then, 4 now\)"):
        openmav.scan(lm, path, out, context=CONTEXT, top_k=4, max_tokens=200, resume=True)
    with pytest.raises(InputError, match="differs in the model"):
        openmav.scan(tiny("llama", n_layers=3), path, out, context=CONTEXT, top_k=TOP_K, max_tokens=200,
                     layers="0,1", resume=True)
    other = write_jsonl(tmp_path / "other.jsonl", stdlib_docs(start=20))
    with pytest.raises(InputError, match="differs in the data"):
        openmav.scan(lm, other, out, context=CONTEXT, top_k=TOP_K, max_tokens=200, resume=True)
    openmav.scan(lm, path, out, context=CONTEXT, top_k=4, max_tokens=200, force=True)
    assert openmav.scan.open(out).settings["top_k"] == 4
