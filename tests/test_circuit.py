"""Circuit discovery: attribution against finite differences, patching and path effects by hand; a planted
head that attribution patching underestimates is drawn because the circuit is ranked by verified effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.circuit import (SIGN, attribution_patching, discover_circuit, logit_diff, pair_tokens,
                                           path_effects, single_token, swap_names, token_prob, verify_by_ablation)
from openmav.interventions.patching import metric_rows, patched_forward
from openmav.testing import tiny_model

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def lm64():
    return tiny_model("llama", seed=2, n_layers=3, dtype=torch.float64)


def ids(lm, text):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def z_of(lm, input_ids):
    """Each layer's o_proj input ``[P, H*hd]`` from a plain forward with a read-only forward hook."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0][0].detach().clone()))
             for i, m in enumerate(lm.parts.o_proj)]
    with torch.no_grad():
        lm.model(input_ids=input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def run_by_hand(lm, input_ids, replace):
    """Logits [V] with ``replace[layer] = (head, value [P, hd])`` put into the o_proj input, projection by hand."""
    d = lm.parts.head_dim

    def hook(layer):
        head, value = replace[layer]

        def fwd(module, inp, out):
            x = inp[0].clone()
            x[0, :, head * d:(head + 1) * d] = value
            return x @ module.weight.T

        return fwd

    hooks = [lm.parts.o_proj[layer].register_forward_hook(hook(layer)) for layer in replace]
    with torch.no_grad():
        logits = lm.model(input_ids=input_ids, use_cache=False).logits[0, -1]
    for h in hooks:
        h.remove()
    return logits


def test_attribution_is_the_directional_derivative(lm64):
    lm = lm64
    clean, corrupt = ids(lm, IOI), ids(lm, swap_names(IOI, lm.tokenizer))
    metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
    est = attribution_patching(lm, clean, corrupt, metric)
    zc, zk = z_of(lm, clean), z_of(lm, corrupt)
    d, eps = lm.parts.head_dim, 1e-2  # RMSNorm computes in float32: a larger step beats its rounding
    for layer, head in [(0, 1), (1, 2), (2, 3)]:
        sl = slice(head * d, (head + 1) * d)
        delta = zk[layer][:, sl] - zc[layer][:, sl]
        up = metric(run_by_hand(lm, clean, {layer: (head, zc[layer][:, sl] + eps * delta)}))
        down = metric(run_by_hand(lm, clean, {layer: (head, zc[layer][:, sl] - eps * delta)}))
        fd = float(up - down) / (2 * eps)
        assert abs(fd) > 1e-6
        assert est[layer, head] == pytest.approx(fd, rel=1e-3, abs=1e-7)


def test_verify_and_paths_equal_hand_patching(lm64):
    lm = lm64
    clean, corrupt = ids(lm, IOI), ids(lm, swap_names(IOI, lm.tokenizer))
    metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
    zc, zk = z_of(lm, clean), z_of(lm, corrupt)
    d = lm.parts.head_dim
    base = float(metric(run_by_hand(lm, clean, {})))
    heads = [(0, 1), (1, 2), (2, 0)]
    real = verify_by_ablation(lm, clean, corrupt, metric, heads, batch_size=2)
    for (layer, head), got in zip(heads, real):
        want = float(metric(run_by_hand(lm, clean, {layer: (head, zk[layer][:, head * d:(head + 1) * d])}))) - base
        assert got == pytest.approx(want, abs=1e-6)
    paths = {(s, r): v for s, r, v in path_effects(lm, clean, corrupt, metric, heads)}
    assert set(paths) == {((0, 1), (1, 2)), ((0, 1), (2, 0)), ((1, 2), (2, 0))}
    for (s, r), got in paths.items():
        # step 1: patch the sender, read the receiver's z; step 2: clean run with only that z replaced
        seen = {}
        hook = lm.parts.o_proj[r[0]].register_forward_hook(lambda m, inp, out: seen.setdefault("z", inp[0][0].clone()))
        run_by_hand(lm, clean, {s[0]: (s[1], zk[s[0]][:, s[1] * d:(s[1] + 1) * d])})
        hook.remove()
        receiver_z = seen["z"][:, r[1] * d:(r[1] + 1) * d]
        want = float(metric(run_by_hand(lm, clean, {r[0]: (r[1], receiver_z)}))) - base
        assert got == pytest.approx(want, abs=1e-6)
    assert len({round(v, 12) for v in paths.values()}) == len(paths), "no constant placeholder weights"


def test_metrics_and_swap_names(lm64):
    logits = torch.tensor([1.0, 3.0, 0.5])
    assert float(logit_diff(1, 2)(logits)) == pytest.approx(2.5)
    assert float(token_prob(0)(logits)) == pytest.approx(float(torch.softmax(logits, 0)[0]))
    assert swap_names(IOI) == "When John and Mary went to the store, Mary gave a drink to"
    with pytest.raises(InputError, match="no two names"):
        swap_names("the cat sat on the mat")
    with pytest.raises(InputError, match="changes the length"):
        swap_names("When Mary and Bartholomew went out, Bartholomew gave it to", lm64.tokenizer)
    with pytest.raises(InputError, match="exactly one token"):
        single_token(lm64, " Bartholomew")
    with pytest.raises(InputError, match="same number of tokens"):
        attribution_patching(lm64, ids(lm64, IOI), ids(lm64, "When Mary"), logit_diff(1, 2))


PLANTED = (0, 2)


@pytest.fixture(scope="module")
def planted():
    """A tiny float64 llama (2 layers x 4 heads) with hand-set weights around one head, L0 H2.

    L0 H2 attends uniformly (zero query) and reads only the direction ``e`` that the
    names carry (`` Mary`` +3e, `` John`` -3e, every other token none), so its output
    flips sign when the names are swapped; it writes that along a direction ``n``.  One
    neuron of L1's MLP reads ``n`` through a saturated SiLU gate: about 0 in the clean
    run (gradient about 0 too), large in the corrupted one, and writes along
    ``u = W_U[Mary] - W_U[John]``.  So patching L0 H2 moves the metric a lot while its
    first-order estimate is near zero.  L1 H0 and L1 H1 read ``e`` and write along ``u``
    directly: linear heads whose estimates are right and larger than L0 H2's.  A large
    neutral direction in `` to``'s embedding keeps the final norm from amplifying L0 H2's
    direct write.
    """
    lm = tiny_model("llama", seed=3, n_layers=2, dtype=torch.float64, spread=False)  # quiet around the plants
    p, d = lm.parts, lm.parts.head_dim
    width = lm.model.config.hidden_size
    mary, john, to = single_token(lm, " Mary"), single_token(lm, " John"), single_token(lm, " to")
    emb, w_u = lm.model.get_input_embeddings().weight, lm.model.get_output_embeddings().weight
    with torch.no_grad():
        u = (w_u[mary] - w_u[john]) / (w_u[mary] - w_u[john]).norm()
        gen, basis = torch.Generator().manual_seed(0), [u]
        for _ in range(3):  # e, n, c: orthonormal, and orthogonal to u
            r = torch.randn(width, generator=gen, dtype=torch.float64)
            for b in basis:
                r -= (r @ b) * b
            basis.append(r / r.norm())
        _, e, n, c = basis
        for v in (e, n, c):
            emb -= (emb @ v)[:, None] * v[None, :]
        emb[mary] += 3 * e
        emb[john] -= 3 * e
        emb[to] += 100 * c
        layer, head = PLANTED
        attn = p.attn[layer]
        kv = head // (p.n_heads // p.n_kv_heads)
        attn.q_proj.weight[head * d:(head + 1) * d] = 0  # uniform attention
        attn.v_proj.weight[kv * d:(kv + 1) * d] = 0
        attn.v_proj.weight[kv * d] = e  # the value's first dimension reads e
        o = p.o_proj[layer].weight
        o -= n[:, None] * (n @ o)[None, :]  # only the planted head writes along n
        o[:, head * d:(head + 1) * d] = 0
        o[:, head * d] = 10 * n
        p.down_proj[0].weight.sub_(n[:, None] * (n @ p.down_proj[0].weight)[None, :])
        a1, o1 = p.attn[1], p.o_proj[1].weight  # L1 H0, H1 (one kv head): linear readers of e, writers of u
        a1.v_proj.weight[0:d] = 0
        a1.v_proj.weight[0] = e
        o1[:, 0:2 * d] = 0
        o1[:, 0] = 30 * u
        o1[:, d] = -15 * u
        mlp = p.mlp[1]  # neuron 0: silu(50 n.x) * (50 n.x), written along u
        mlp.gate_proj.weight[0] = 50 * n
        mlp.up_proj.weight[0] = 50 * n
        mlp.down_proj.weight[:, 0] = u
    return lm


def test_planted_head_with_a_small_estimate_is_drawn(planted):
    lm = planted
    clean = ids(lm, IOI)
    corrupt = ids(lm, swap_names(IOI, lm.tokenizer))
    a, b, at = pair_tokens(lm, clean, corrupt)
    assert (a, b) == (single_token(lm, " Mary"), single_token(lm, " John")) and at == 2
    metric = logit_diff(a, b)
    circ = discover_circuit(lm, clean, corrupt, metric, top_n=2)
    estimate, verified = circ.attribution[PLANTED], circ.verified[PLANTED]
    print(f"planted L0 H2: estimate {estimate:.4f}, verified {verified:.4f}; nodes {circ.nodes}")
    by_estimate = sorted(lm.parts.heads(), key=lambda h: -abs(circ.attribution[h]))
    assert PLANTED not in by_estimate[:2], "ranked by the estimate, the planted head would not be drawn"
    assert abs(verified) > 20 * abs(estimate) and abs(verified) > 1.0
    drawn = [(n["layer"], n["head"]) for n in circ.nodes]
    assert drawn[0] == PLANTED, "the largest verified effect is drawn first"
    node = circ.nodes[0]
    assert node["effect"] == pytest.approx(verified) and node["attribution"] == pytest.approx(estimate)
    assert node["attribution_rank"] == by_estimate.index(PLANTED) + 1 > 2
    assert abs(circ.nodes[0]["effect"]) >= abs(circ.nodes[1]["effect"])
    # the verified value is real patching: the clean run with L0 H2's z from the corrupted run, by hand
    d = lm.parts.head_dim
    zk = z_of(lm, corrupt)[0][:, 2 * d:3 * d]
    want = float(metric(run_by_hand(lm, clean, {0: (2, zk)})) - metric(run_by_hand(lm, clean, {})))
    assert verified == pytest.approx(want, abs=1e-6)
    d = circ.to_dict()
    assert d["sign"] == SIGN and "negative means" in SIGN and d["verify_k"] == 8


def test_verify_k_verifies_the_largest_estimates_only(planted):
    lm = planted
    clean, corrupt = ids(lm, IOI), ids(lm, swap_names(IOI, lm.tokenizer))
    metric = logit_diff(*pair_tokens(lm, clean, corrupt)[:2])
    circ = discover_circuit(lm, clean, corrupt, metric, top_n=2, verify_k=2)
    by_estimate = sorted(lm.parts.heads(), key=lambda h: -abs(circ.attribution[h]))
    assert circ.n_verified == 2 and circ.verify_k == 2
    assert {(n["layer"], n["head"]) for n in circ.nodes} == set(by_estimate[:2])  # the planted head is missed
    assert np.isfinite(circ.verified).sum() == 2 and np.isnan(circ.verified[PLANTED])
    assert circ.to_dict()["verified"][0][2] is None
    with pytest.raises(InputError, match="verify_k must be an integer in 3..8"):
        discover_circuit(lm, clean, corrupt, metric, top_n=3, verify_k=2)


def test_pair_tokens_needs_a_difference(lm64):
    clean = ids(lm64, IOI)
    with pytest.raises(InputError, match="equals the prompt"):
        pair_tokens(lm64, clean, clean)
    with pytest.raises(InputError, match="same number of tokens"):
        pair_tokens(lm64, clean, ids(lm64, "When Mary"))


def test_smollm2_ioi_attribution_correlates_with_real_patching(smollm2):
    lm = smollm2
    corrupt = swap_names(IOI, lm.tokenizer)
    metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
    events = []
    circ = discover_circuit(lm, ids(lm, IOI), ids(lm, corrupt), metric, top_n=6, progress=events.append)
    print(f"SmolLM2 IOI: clean {circ.clean_metric:.3f}, corrupt {circ.corrupt_metric:.3f}, "
          f"Pearson(attribution, patching) over {circ.n_verified} heads = {circ.correlation:.3f}; "
          f"nodes {[(n['layer'], n['head'], round(n['effect'], 2), n['attribution_rank']) for n in circ.nodes]}")
    assert circ.clean_metric > 0 > circ.corrupt_metric
    assert circ.n_verified == 270 and circ.correlation > 0.7
    assert len(circ.nodes) == 6 and all(e["source"][0] < e["target"][0] for e in circ.edges)
    effects = [abs(n["effect"]) for n in circ.nodes]
    assert effects == sorted(effects, reverse=True)
    assert effects[-1] >= np.sort(np.abs(circ.verified).ravel())[-6] - 1e-9  # the six largest verified effects
    # L16 H0: a large verified effect whose estimate is about 0 (far down the estimate ranking) is drawn
    l16 = next(n for n in circ.nodes if (n["layer"], n["head"]) == (16, 0))
    assert abs(l16["attribution"]) < 0.5 < abs(l16["effect"]) and l16["attribution_rank"] > 6
    # the verified numbers are real patching: spot-check one against a single patched forward
    node = circ.nodes[-1]
    z = patched_forward(lm, ids(lm, corrupt), [[]], record_layers=[node["layer"]])[1][node["layer"]][0]
    one = patched_forward(lm, ids(lm, IOI), [[(node["layer"], node["head"], z[:, node["head"]])]])[0]
    assert float(metric_rows(metric, one)[0]) - circ.clean_metric == pytest.approx(node["effect"], abs=1e-4)
    assert {e["phase"] for e in events} >= {"attribution", "verify", "paths", "done"}
    assert np.isfinite(circ.verified).all() and set(circ.to_dict()) >= {"nodes", "edges", "correlation"}
