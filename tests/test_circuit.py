"""Circuit discovery: attribution against finite differences, patching and path effects by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.circuit import (attribution_patching, discover_circuit, logit_diff, path_effects,
                                           single_token, swap_names, token_prob, verify_by_ablation)
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


def test_smollm2_ioi_attribution_correlates_with_real_patching(smollm2):
    lm = smollm2
    corrupt = swap_names(IOI, lm.tokenizer)
    metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
    events = []
    circ = discover_circuit(lm, ids(lm, IOI), ids(lm, corrupt), metric, top_n=6, progress=events.append)
    print(f"SmolLM2 IOI: clean {circ.clean_metric:.3f}, corrupt {circ.corrupt_metric:.3f}, "
          f"Pearson(attribution, patching) over {circ.n_verified} heads = {circ.correlation:.3f}")
    assert circ.clean_metric > 0 > circ.corrupt_metric
    assert circ.n_verified == 270 and circ.correlation > 0.7
    assert len(circ.nodes) == 6 and all(e["source"][0] < e["target"][0] for e in circ.edges)
    # the verified numbers are real patching: spot-check one against a single patched forward
    node = circ.nodes[-1]
    z = patched_forward(lm, ids(lm, corrupt), [[]], record_layers=[node["layer"]])[1][node["layer"]][0]
    one = patched_forward(lm, ids(lm, IOI), [[(node["layer"], node["head"], z[:, node["head"]])]])[0]
    assert float(metric_rows(metric, one)[0]) - circ.clean_metric == pytest.approx(node["effect"], abs=1e-4)
    assert {e["phase"] for e in events} >= {"attribution", "verify", "paths", "done"}
    assert np.isfinite(circ.verified).all() and set(circ.to_dict()) >= {"nodes", "edges", "correlation"}
