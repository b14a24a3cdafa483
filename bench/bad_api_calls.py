"""A table of bad calls to the public Python API, and how each one ends.

    python bench/bad_api_calls.py              # tiny random-weight llama (vocab 400, context 512)
    python bench/bad_api_calls.py --smollm2    # also the bundled SmolLM2's calls past its 8192-token context
    python bench/bad_api_calls.py --all        # print every row, not only the ones not refused cleanly

Each row is one call with one bad argument.  "Refused cleanly" means: an ``openmav.errors.InputError``
(or a subclass), a one-line message, no forward of the model (a pre-hook on every block counts them; on
SmolLM2 a tripwire raises instead), under a second.  Anything else is counted by how it ended: another
exception (its type), or accepted.  The last line is the count.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def catalogue(lm, tmp: str) -> list[tuple[str, object]]:
    """``(label, call)`` for every bad call on the tiny model ``lm``."""
    from openmav import MAV
    from openmav.analysis import compare
    from openmav.analysis.extractor import AttentionExtractor
    from openmav.analysis.head_scores import compute_head_scores
    from openmav.analysis.visualizer import AttentionVisualizer
    from openmav.backends import load_model, wrap_model
    from openmav.capture import CaptureConfig, SamplingConfig, generate_steps, logit_lens
    from openmav.interventions import (
        HeadAblation,
        ablate_heads,
        ablated_logits,
        correlation,
        discover_circuit,
        evaluate_all_heads,
        generic_study,
        head_means,
        logit_diff,
        single_token,
        swap_names,
        targeted_study,
        token_prob,
        verify_by_ablation,
    )
    from openmav.interventions.attribution import direct_logit_attribution
    from openmav.interventions.circuit import attribution_patching, pair_tokens
    from openmav.interventions.studies import logit_diff_study

    ids = lm.tokenizer("When Mary and John went to the store, John gave a drink to", return_tensors="pt").input_ids
    corrupt = lm.tokenizer("When John and Mary went to the store, Mary gave a drink to", return_tensors="pt").input_ids
    corrupt = corrupt[:, :ids.shape[1]]
    ex = AttentionExtractor(model=lm)
    res = ex.extract_activations("The cat sat on the mat")
    pc = compare.compare_prompts(ex, ["The cat sat on the mat", "A cat was on the mat"])
    scores = compute_head_scores(lm, seq_len=4, batch=1)
    stats = ex.get_head_stats("The cat sat")
    viz = AttentionVisualizer()
    folder = os.path.join(tmp, "a-folder")
    os.makedirs(folder, exist_ok=True)
    a_file = os.path.join(tmp, "a-file")
    open(a_file, "w").close()
    vocab, ctx = 400, 512
    nan, inf = math.nan, math.inf
    rows: list[tuple[str, object]] = []

    def each(template: str, values, call):
        for v in values:
            rows.append((template.format(v=_short(v)), (lambda v=v: call(v))))

    bad_whole = [0, -1, 2.5, nan, inf, "5", None, True, [3]]
    bad_text = [5, None, b"hi", "x\ud800y", "caf\udce9", ["hi"]]
    bad_flag = ["yes", 1, 0, None, 2.0]
    bad_paths = [folder, folder + "/", os.path.join(tmp, "plot.xyz"), os.path.join(a_file, "plot.png"), 42,
                 ["a.png"]]
    long_ids = torch.ones(1, ctx + 1, dtype=torch.long)

    # ---- the capture engine ----
    each("generate_steps(lm, input_ids={v})", [torch.ones(1, 8), torch.ones(8, dtype=torch.long),
                                             -torch.ones(1, 8, dtype=torch.long), torch.full((1, 8), vocab),
                                             torch.ones(2, 8, dtype=torch.long), [[1, 2, 3]], [1, 2, 3],
                                             np.ones((1, 3), dtype=np.int64), long_ids,
                                             torch.ones(1, ctx - 10, dtype=torch.long),
                                             torch.zeros(1, 0, dtype=torch.long), torch.ones(1, 1, 3, dtype=torch.long),
                                             torch.ones(1, 3, dtype=torch.int16), "1 2 3", 7],
         lambda v: generate_steps(lm, input_ids=v, max_new_tokens=50))
    each("generate_steps(lm, 'hi', max_new_tokens={v})", bad_whole + [10**7], lambda v: generate_steps(lm, "hi", v))
    each("generate_steps(lm, prompt={v})", bad_text[:1] + bad_text[2:] + ["", "   "], lambda v: generate_steps(lm, v))
    each("generate_steps(lm, 'hi', sampling={v})", ["greedy", 0.7, {"temperature": 1}], lambda v: generate_steps(
        lm, "hi", sampling=v))
    each("generate_steps(lm, 'hi', capture={v})", ["all", 1], lambda v: generate_steps(lm, "hi", capture=v))
    each("generate_steps(lm, 'hi', stop_at_eos={v})", bad_flag, lambda v: generate_steps(lm, "hi", stop_at_eos=v))
    each("generate_steps({v}, 'hi')", ["smollm2-135m", None, 3], lambda v: generate_steps(v, "hi"))
    rows.append(("generate_steps(lm, 'hi', input_ids=ids)", lambda: generate_steps(lm, "hi", input_ids=ids)))
    each("SamplingConfig(temperature={v})", [nan, inf, -inf, -0.1, "1", None, True], lambda v: SamplingConfig(
        temperature=v))
    each("SamplingConfig(top_k={v})", [-1, 2.5, nan, "5", None, True, 2**31], lambda v: SamplingConfig(top_k=v))
    each("SamplingConfig(top_p={v})", [0, 0.0, 1.5, nan, inf, "0.9", None], lambda v: SamplingConfig(top_p=v))
    each("SamplingConfig(min_p={v})", [-0.1, 1.1, nan, "0"], lambda v: SamplingConfig(min_p=v))
    each("SamplingConfig(repetition_penalty={v})", [0, -1, nan, inf, "1.1"],
         lambda v: SamplingConfig(repetition_penalty=v))
    each("SamplingConfig(seed={v})", ["abc", -1, 2**64, 1.5, True], lambda v: SamplingConfig(seed=v))
    each("CaptureConfig(lens_batch={v})", [0, -1, 1.5, "8", 10**9], lambda v: CaptureConfig(lens_batch=v))
    each("CaptureConfig(lens_top_k={v})", [0, 2.0, None], lambda v: CaptureConfig(lens_top_k=v))
    each("CaptureConfig(attention={v})", ["no", 1], lambda v: CaptureConfig(attention=v))
    each("logit_lens(lm, {v})", [torch.zeros(3, 7), torch.zeros(3, 64, dtype=torch.long), "resid", torch.zeros(
        2, 65), torch.zeros(0)], lambda v: logit_lens(lm, v))

    # ---- model loading ----
    each("load_model({v})", ["", "   ", 5, "x\ud800", b"smollm2-135m"], lambda v: load_model(v))
    each("load_model('m', device={v})", ["tpu", "cuda:x", "", 3, "gpu"], lambda v: load_model("m", device=v))
    each("load_model('m', dtype={v})", ["float64", "int8", 16, ""], lambda v: load_model("m", dtype=v))
    each("load_model('m', progress={v})", ["print", 1], lambda v: load_model("m", progress=v))
    each("load_model('m', reverify={v})", ["yes", 1], lambda v: load_model("m", reverify=v))
    each("wrap_model(model, tokenizer, name={v})", ["", 5, "x\ud800"], lambda v: wrap_model(lm.model, lm.tokenizer,
                                                                                            name=v))
    each("wrap_model(model, tokenizer, verify={v})", ["no", 0], lambda v: wrap_model(lm.model, lm.tokenizer, verify=v))
    each("wrap_model(model, tokenizer, device={v})", ["tpu", 7], lambda v: wrap_model(lm.model, lm.tokenizer,
                                                                                      device=v))
    each("wrap_model(model, {v})", ["tokenizer", 3], lambda v: wrap_model(lm.model, v))

    # ---- interventions ----
    each("ablated_logits(lm, ids, [HeadAblation(layer={v}, head=0)])", [2, -1, True, 1.0, "0", 99, None],
         lambda v: ablated_logits(lm, ids, [HeadAblation(v, 0)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, head={v})])", [4, -1, True, 0.5, "1"],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, v)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, 0, kind={v})])", ["erase", "", 3, None],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, v)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, 0, 'scale', factor={v})])", [1e300, -1e4, nan, inf, "2", None],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, "scale", factor=v)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, 0, 'sparsify', threshold={v})])", [-1, nan, "0.1"],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, "sparsify", threshold=v)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, 0, 'permute', seed={v})])", [-1, 1.5, "s"],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, "permute", seed=v)]))
    each("ablated_logits(lm, ids, [HeadAblation(0, 0, positions={v})])", [(), (500,), (-1,), (1.5,), 3, "0"],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, positions=v)]))
    each("ablated_logits(lm, {v}, [])", [long_ids, torch.ones(1, 8194, dtype=torch.long), [[-1, 2]], [vocab],
                                         torch.ones(1, 4), torch.ones(2, 4, dtype=torch.long), "ids", [], None],
         lambda v: ablated_logits(lm, v, []))
    each("ablated_logits(lm, ids, {v})", [3, [1, 2], "heads"], lambda v: ablated_logits(lm, ids, v))
    each("ablated_logits(lm, ids, [mean], reference_ids={v})", [[vocab], long_ids, "r"],
         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, "mean")], v))
    each("head_means(lm, {v})", [[-5], torch.ones(1, 3), None], lambda v: head_means(lm, v))
    each("ablate_heads(lm, [mean], means={v})", [torch.zeros(2, 4, 3), "m", 1.0],
         lambda v: _enter(ablate_heads(lm, [HeadAblation(0, 0, "mean")], means=v)))
    each("evaluate_all_heads(lm, ids, batch_size={v})", [0, -3, 2.5, "32", None, True, 10**6],
         lambda v: evaluate_all_heads(lm, ids, batch_size=v))
    each("evaluate_all_heads(lm, ids, kind={v})", ["erase", None], lambda v: evaluate_all_heads(lm, ids, kind=v))
    each("evaluate_all_heads(lm, ids, tokens={v})", [(3, vocab), (3, 3), (-1, 2), (True, 2), (1, 2, 3), 5, "ab"],
         lambda v: evaluate_all_heads(lm, ids, tokens=v))
    each("evaluate_all_heads(lm, ids, cancel={v})", [True, "stop", 1], lambda v: evaluate_all_heads(lm, ids, cancel=v))
    each("evaluate_all_heads(lm, ids, on_batch={v})", ["print", 1], lambda v: evaluate_all_heads(lm, ids, on_batch=v))
    each("evaluate_all_heads(lm, ids, share_prefix={v})", ["yes", 1], lambda v: evaluate_all_heads(
        lm, ids, share_prefix=v))
    each("evaluate_all_heads(lm, ids, 'scale', factor={v})", [1e300, nan], lambda v: evaluate_all_heads(
        lm, ids, "scale", factor=v))
    each("evaluate_all_heads(lm, ids, positions={v})", [(99,), ()], lambda v: evaluate_all_heads(lm, ids,
                                                                                                 positions=v))
    each("generic_study(lm, ids, max_heads={v})", [0, True, 2.5, "3", None], lambda v: generic_study(lm, ids,
                                                                                                     max_heads=v))
    each("generic_study(lm, ids, candidates={v})", [0, 1.5, "20"], lambda v: generic_study(lm, ids, candidates=v))
    each("generic_study(lm, ids, k={v})", [0, vocab + 1, 2.0], lambda v: generic_study(lm, ids, k=v))
    each("generic_study(lm, ids, progress={v})", ["log", 3], lambda v: generic_study(lm, ids, progress=v))
    each("generic_study(lm, ids, {v}=1)", ["factr", "layer"], lambda v: generic_study(lm, ids, **{v: 1}))
    each("targeted_study(lm, ids, target_id={v})", [-1, vocab, True, 2.0, "5", None],
         lambda v: targeted_study(lm, ids, target_id=v))
    each("logit_diff_study(lm, ids, {v}, 3)", [-1, vocab, True, 3], lambda v: logit_diff_study(lm, ids, v, 3))
    each("logit_diff({v}, 6)", [-1, True, 2.5, "5", None], lambda v: logit_diff(v, 6))
    each("token_prob({v})", [-1, False, 1.5], lambda v: token_prob(v))
    each("single_token(lm, {v})", ["", 5, None, "x\ud800"], lambda v: single_token(lm, v))
    each("swap_names({v})", [None, 5, "x\ud800"], lambda v: swap_names(v))
    each("swap_names('Mary and John', tokenizer={v})", ["tok", 1], lambda v: swap_names("Mary and John x", v))
    each("pair_tokens(lm, ids, {v})", [ids[:, :3], [vocab], "c"], lambda v: pair_tokens(lm, ids, v))
    each("attribution_patching(lm, ids, corrupt, metric={v})", [None, 3, "logit_diff", logit_diff(vocab, 1)],
         lambda v: attribution_patching(lm, ids, corrupt, v))
    each("verify_by_ablation(lm, ids, corrupt, metric, heads={v})", [[(2, 0)], [(0, 4)], [3], 5, [(True, 0)]],
         lambda v: verify_by_ablation(lm, ids, corrupt, logit_diff(5, 6), v))
    each("verify_by_ablation(..., batch_size={v})", [0, "8"], lambda v: verify_by_ablation(
        lm, ids, corrupt, logit_diff(5, 6), [(0, 0)], batch_size=v))
    each("discover_circuit(lm, ids, corrupt, metric, top_n={v})", [0, 9, True, 2.5],
         lambda v: discover_circuit(lm, ids, corrupt, logit_diff(5, 6), top_n=v))
    each("discover_circuit(..., verify_k={v})", [1, 99, "all"], lambda v: discover_circuit(
        lm, ids, corrupt, logit_diff(5, 6), top_n=2, verify_k=v))
    each("discover_circuit(..., cancel={v})", ["x", 1], lambda v: discover_circuit(lm, ids, corrupt,
                                                                                   logit_diff(5, 6), cancel=v))
    each("discover_circuit(..., progress={v})", [1, "p"], lambda v: discover_circuit(lm, ids, corrupt,
                                                                                     logit_diff(5, 6), progress=v))
    each("discover_circuit(lm, ids, {v}, metric)", [ids[:, :4], [vocab + 1]], lambda v: discover_circuit(
        lm, ids, v, logit_diff(5, 6)))
    each("correlation({v}, [1, 2, 3])", ["abc", 5, None, [1, 2], [[1, 2, 3]], ["a", "b", "c"]],
         lambda v: correlation(v, [1, 2, 3]))
    each("direct_logit_attribution(lm, ids, token={v})", [-1, vocab, True, 2.0], lambda v: direct_logit_attribution(
        lm, ids, v))
    each("direct_logit_attribution(lm, ids, 3, position={v})", [-1, 99, True, 1.5], lambda v: direct_logit_attribution(
        lm, ids, 3, v))

    # ---- extraction and plots ----
    each("AttentionExtractor(model_name={v})", ["", "  ", 5, "x\ud800"], lambda v: AttentionExtractor(v))
    each("AttentionExtractor('m', device={v})", ["tpu", 3], lambda v: AttentionExtractor("m", device=v))
    each("AttentionExtractor('m', dtype={v})", ["float64", None, 32], lambda v: AttentionExtractor("m", dtype=v))
    each("AttentionExtractor('m', reverify={v})", ["yes"], lambda v: AttentionExtractor("m", reverify=v))
    each("ex.extract_activations({v})", [5, None, "x\ud800y", "   ", "", "one two " * 400, b"hi"],
         lambda v: ex.extract_activations(v))
    each("ex.get_attention_stats('hi', threshold={v})", [-0.1, 1.5, nan, "0.1", None, True],
         lambda v: ex.get_attention_stats("hi there", v))
    each("ex.get_head_stats({v})", [7, "x\ud800"], lambda v: ex.get_head_stats(v))
    each("ex.compare_prompts({v})", [[], 5, ["a", 5], ["x\ud800"], None], lambda v: ex.compare_prompts(v))
    each("ex.compare_prompts(prompts, batch_size={v})", [0, 1.5, "16", None], lambda v: ex.compare_prompts(
        ["a b", "c d"], v))
    each("ex.compare_prompts(prompts, padding_side={v})", ["middle", 1], lambda v: ex.compare_prompts(
        ["a b", "c d"], padding_side=v))
    each("ex.compare_prompts(prompts, neurons={v})", ["yes"], lambda v: ex.compare_prompts(["a b", "c d"], neurons=v))
    each("ex.get_neuron_activations('hi', {v})", [True, 2, -3, 1.0, "0", None], lambda v: ex.get_neuron_activations(
        "hi there", v))
    each("ex.get_neuron_activations('hi', 0, residual={v})", ["yes", 1], lambda v: ex.get_neuron_activations(
        "hi there", 0, v))
    each("compare.compare_prompts(ex, {v})", [["one"], "one string", 5, [None, "a"]],
         lambda v: compare.compare_prompts(ex, v))
    each("compare.compare_prompts(ex, prompts, positions={v})", ["middle", 3], lambda v: compare.compare_prompts(
        ex, ["a b", "c d"], positions=v))
    each("compare.compare_prompts(ex, prompts, batch_size={v})", [0, "8"], lambda v: compare.compare_prompts(
        ex, ["a b", "c d"], batch_size=v))
    each("compare.differences(pc, top_k={v})", [0, True, 2.5], lambda v: compare.differences(pc, top_k=v))
    each("compute_head_scores(lm, seq_len={v})", [1, 300, 10**9, 2.5, "30", True], lambda v: compute_head_scores(
        lm, seq_len=v))
    each("compute_head_scores(lm, batch={v})", [0, 10**6, None], lambda v: compute_head_scores(lm, batch=v))
    each("compute_head_scores(lm, seed={v})", [-1, "s"], lambda v: compute_head_scores(lm, seed=v))
    each("AttentionVisualizer(cmap={v})", ["no-such-map", 5, None], lambda v: AttentionVisualizer(cmap=v))
    each("AttentionVisualizer(dpi={v})", [0, -5, nan, 10**6, "high"], lambda v: AttentionVisualizer(dpi=v))
    each("viz.plot_all_heads(..., save_path={v})", bad_paths, lambda v: viz.plot_all_heads(res.attention, res.tokens,
                                                                                           0, v))
    each("viz.plot_all_heads(..., layer_idx={v})", [2, -3, True, 1.5], lambda v: viz.plot_all_heads(
        res.attention, res.tokens, v))
    each("viz.plot_all_heads(..., cols={v})", [0, 1.5], lambda v: viz.plot_all_heads(res.attention, res.tokens, cols=v))
    each("viz.plot_attention_heatmap(..., head_idx={v})", [4, True], lambda v: viz.plot_attention_heatmap(
        res.attention, res.tokens, 0, v))
    each("viz.plot_attention_heatmap(att, tokens={v})", [None, 5, res.tokens[:2]], lambda v: viz.plot_attention_heatmap(
        res.attention, v))
    each("viz.plot_head_scores(scores, save_path={v})", bad_paths[:4], lambda v: viz.plot_head_scores(scores, v))
    each("viz.plot_layer_statistics(stats, save_path={v})", bad_paths[:3], lambda v: viz.plot_layer_statistics(
        stats, v))
    each("viz.plot_neuron_activations(..., top_k={v})", [0, True], lambda v: viz.plot_neuron_activations(
        np.zeros((6, 8)), res.tokens, top_k=v))
    each("viz.plot_interactive_attention(res, layers={v})", [[99], [-3], [True], 5, "0", []],
         lambda v: viz.plot_interactive_attention(res, layers=v))
    each("viz.plot_interactive_attention(res, save_path={v})", [folder, folder + "/", os.path.join(a_file, "x.html")],
         lambda v: viz.plot_interactive_attention(res, v))
    each("viz.plot_interactive_attention({v})", ["res", None], lambda v: viz.plot_interactive_attention(v))

    # ---- the live view from Python ----
    def mav(**kw):
        return MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, prompt="hi", max_new_tokens=2, format="text", **kw)

    each("MAV(model={v})", ["", "  ", 5], lambda v: MAV(v, "hi", format="text"))
    each("MAV(prompt={v})", [5, "x\ud800", "   "], lambda v: MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer,
                                                                 prompt=v, format="text"))
    each("MAV(max_new_tokens={v})", [0, 2.5, nan, "5"], lambda v: MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer,
                                                                     max_new_tokens=v, format="text"))
    each("MAV(temp={v})", [nan, -1, "0.7"], lambda v: mav(temp=v))
    each("MAV(top_p={v})", [0, 2], lambda v: mav(top_p=v))
    each("MAV(seed={v})", ["abc", -1], lambda v: mav(seed=v))
    each("MAV(refresh_rate={v})", [nan, -1, "fast"], lambda v: mav(refresh_rate=v))
    each("MAV(record={v})", [folder, os.path.join(a_file, "t.npz")], lambda v: mav(record=v))
    each("MAV(interactive={v})", ["yes"], lambda v: mav(interactive=v))
    each("MAV(format={v})", ["html"], lambda v: MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, format=v))
    each("MAV(threads={v})", [0, True], lambda v: mav(threads=v))

    # ---- the design document's classes and the training helpers ----
    from openmav.backends.model_backend_transformers import TransformersBackend
    from openmav.processors.state_fetcher import StateFetcher
    from openmav.training import MAVCallback, visualize_every

    backend = TransformersBackend("tiny", model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu")
    backend.initialize()  # its parts are verified here, before the forwards are counted
    each("TransformersBackend({v})", ["", 5], lambda v: TransformersBackend(v))
    each("TransformersBackend('m', progress={v})", ["bar"], lambda v: TransformersBackend("m", progress=v))
    each("backend.generate({v})", [torch.ones(1, 3), long_ids, [[1, 2]], torch.full((1, 2), vocab)],
         lambda v: backend.generate(v))
    each("backend.generate(ids, output_attentions={v})", ["yes"], lambda v: backend.generate(ids, output_attentions=v))
    each("backend.decode({v})", [[vocab], [-1], "ids", [1.5]], lambda v: backend.decode(v))
    each("backend.tokenize({v})", [5, "x\ud800"], lambda v: backend.tokenize(v))
    each("StateFetcher(backend, max_new_tokens={v})", [0, 2.5], lambda v: StateFetcher(backend, v))
    each("StateFetcher(backend, stop_at_eos={v})", ["no"], lambda v: StateFetcher(backend, stop_at_eos=v))
    each("StateFetcher(backend, capture={v})", ["all"], lambda v: StateFetcher(backend, capture=v))
    each("StateFetcher(backend).fetch_next('hi', temperature={v})", [nan, -1], lambda v: StateFetcher(
        backend).fetch_next("hi", temperature=v))
    each("MAVCallback(tok, every_n_steps={v})", [-1, "50", 2.5], lambda v: MAVCallback(lm.tokenizer, every_n_steps=v))
    each("MAVCallback(tok, prompt={v})", ["", 5], lambda v: MAVCallback(lm.tokenizer, prompt=v))
    each("MAVCallback(tok, max_new_tokens={v})", [0], lambda v: MAVCallback(lm.tokenizer, max_new_tokens=v))
    each("visualize_every(model, tok, step=10, every={v})", ["5", -1, 1.5], lambda v: visualize_every(
        lm.model, lm.tokenizer, 10, v))
    return rows


def smollm2_catalogue(lm) -> list[tuple[str, object]]:
    """SmolLM2's calls past its context (8192 tokens): the one that once took 22 GB, and its neighbours."""
    from openmav.capture import generate_steps
    from openmav.interventions import HeadAblation, ablated_logits

    eight = torch.ones(1, 8, dtype=torch.long)
    return [
        ("smollm2: generate_steps(lm, input_ids=ones(1, 8197))",
         lambda: generate_steps(lm, input_ids=torch.ones(1, 8197, dtype=torch.long))),
        ("smollm2: generate_steps(lm, input_ids=ones(1, 8190), max_new_tokens=50)",
         lambda: generate_steps(lm, input_ids=torch.ones(1, 8190, dtype=torch.long), max_new_tokens=50)),
        ("smollm2: ablated_logits(lm, ones(1, 8194), [])", lambda: ablated_logits(lm, torch.ones(1, 8194,
                                                                                                dtype=torch.long), [])),
        ("smollm2: ablated_logits(lm, ids, [scale 1e300])",
         lambda: ablated_logits(lm, eight, [HeadAblation(0, 0, "scale", factor=1e300)])),
        ("smollm2: generate_steps(lm, input_ids=[[49152]])",
         lambda: generate_steps(lm, input_ids=torch.tensor([[49152]]))),
    ]


def _enter(cm):
    with cm:
        pass


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}:{str(value.dtype).replace('torch.', '')}"
    if isinstance(value, np.ndarray):
        return f"ndarray{list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run(rows, counter, tripwire=None) -> list[tuple[str, str, str]]:
    """``(label, outcome, message)`` per row: ``clean`` or what went wrong."""
    from openmav.errors import InputError

    out = []
    for label, call in rows:
        before = counter[0]
        start = time.perf_counter()
        try:
            result = call()
            if hasattr(result, "__next__"):
                next(result)
        except InputError as exc:
            message = str(exc)
            seconds = time.perf_counter() - start
            if "\n" in message.strip():
                outcome = "InputError over several lines"
            elif counter[0] != before:
                outcome = "InputError after a forward"
            elif seconds > 1.0:
                outcome = f"InputError after {seconds:.1f} s"
            else:
                outcome = "clean"
        except Exception as exc:  # noqa: BLE001 - the table counts every other ending
            outcome, message = type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        else:
            outcome, message = "accepted", ""
        out.append((label, outcome, message))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="add SmolLM2's calls past its context")
    parser.add_argument("--all", action="store_true", help="print every row")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    counter = [0]

    def count(module, inputs):
        counter[0] += 1

    with tempfile.TemporaryDirectory(prefix="openmav-bad-calls-") as tmp:
        rows = catalogue(lm, tmp)
        for block in lm.parts.blocks:
            block.register_forward_pre_hook(count)
        results = run(rows, counter)
        if args.smollm2:
            from openmav.backends import load_model

            big = load_model("smollm2-135m", device="cpu")

            def tripwire(module, inputs):
                counter[0] += 1
                raise RuntimeError("tripwire: a forward ran on SmolLM2")

            for block in big.parts.blocks:
                block.register_forward_pre_hook(tripwire)
            results += run(smollm2_catalogue(big), counter)
    width = max(len(label) for label, _, _ in results)
    for label, outcome, message in results:
        if args.all or outcome != "clean":
            print(f"{label:<{width}}  {outcome:<12}  {message[:110]}")
    clean = sum(outcome == "clean" for _, outcome, _ in results)
    print(f"{clean} of {len(results)} bad API calls refused cleanly (one-line InputError, no forward, under 1 s)")


if __name__ == "__main__":
    main()
