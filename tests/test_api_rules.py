"""The Python API refuses bad arguments with the command line's rules: one InputError, before any work.

Every public function and class (``openmav``'s exports, ``openmav.capture``, ``openmav.interventions``,
the extraction and plotting API, ``load_model``/``wrap_model``, ``MAV``) is called by hypothesis with one
argument replaced by a generated bad value and every other argument good.  Each call must raise
:class:`~openmav.errors.InputError` (or a documented subclass) whose message is one line naming the
argument, and nothing else: no other exception, no silent acceptance.  And it must happen before any
work: a forward pre-hook on every block of the tiny model counts forwards (none may run), and
``tracemalloc`` bounds what Python allocates during a refused call.  A last test feeds the bundled
SmolLM2 the sequence past its context that once grew a process to 22 GB, with a tripwire on its
forward.
"""

from __future__ import annotations

import functools
import math
import resource
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from openmav.errors import InputError

VOCAB, CONTEXT, LAYERS, HEADS = 400, 512, 2, 4  # the tiny llama of openmav.testing
NEW = 3  # max_new_tokens of the generate_steps calls: ids longer than CONTEXT - NEW are past the context
PY_ALLOC_LIMIT = 4 * 2**20  # bytes Python may allocate during one refused call
# no shrinking: a failure prints every labelled draw already, and a slow shrink would hold the suite up
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNT = {"tried": 0, "refused": 0}
# the word a refusal names where it is not the argument's own name (messages the analysis API had before)
WORDS = {"get_neuron_activations.layer_idx": "layer", "plot_all_heads.layer_idx": "layer",
         "plot_attention_heatmap.head_idx": "head", "plot_interactive_attention.layers": "layer"}
# (MAV.temp needs no entry: "temp" is found both in "temp must be a number, got None" and in the sampling
# rules' "temperature must be ...")


@functools.cache
def world():
    """The objects the calls need, built once (their forwards run here, before any counting)."""
    import openmav.analysis.interactive  # noqa: F401 - imported once here, not during a measured call
    import openmav.cli.live  # noqa: F401
    import openmav.mav  # noqa: F401
    from openmav.analysis import compare
    from openmav.analysis.extractor import AttentionExtractor
    from openmav.analysis.head_scores import compute_head_scores
    from openmav.analysis.visualizer import AttentionVisualizer
    from openmav.backends.model_backend_transformers import TransformersBackend
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    ex = AttentionExtractor(model=lm)
    backend = TransformersBackend("tiny", model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu")
    backend.initialize()
    forwards = [0]

    def count(module, args):
        forwards[0] += 1

    for block in lm.parts.blocks:  # hooks stay on: a forward pre-hook that only counts changes no number
        block.register_forward_pre_hook(count)
    ids = lm.tokenizer("When Mary and John went to the store, John gave a drink to", return_tensors="pt").input_ids
    corrupt = lm.tokenizer("When John and Mary went to the store, Mary gave a drink to",
                           return_tensors="pt").input_ids
    return SimpleNamespace(
        lm=lm, ex=ex, ids=ids, backend=backend, corrupt=corrupt[:, :ids.shape[1]], forwards=forwards,
        res=ex.extract_activations("The cat sat on the mat"),
        pc=compare.compare_prompts(ex, ["The cat sat on the mat", "A cat was on the mat"]),
        scores=compute_head_scores(lm, seq_len=4, batch=1),
        stats=ex.get_head_stats("The cat sat"), viz=AttentionVisualizer(), compare=compare)


def refused(call, name: str) -> InputError:
    """Run ``call``; it must raise an InputError naming ``name``, with no forward and a small allocation."""
    w = world()
    before = w.forwards[0]
    COUNT["tried"] += 1
    tracemalloc.start()
    try:
        result = call()
        if hasattr(result, "__next__"):  # a generator the checks let through would run here
            next(result)
    except InputError as exc:
        error = exc
    else:
        pytest.fail(f"{name}: accepted a bad value")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    message = str(error)
    assert "\n" not in message.strip(), message
    word = WORDS.get(name, name.split(".")[-1])
    assert word in message, f"{name}: {word!r} not named in: {message}"
    assert w.forwards[0] == before, f"{name}: a forward ran before the refusal ({message})"
    assert peak < PY_ALLOC_LIMIT, f"{name}: {peak} bytes allocated before the refusal ({message})"
    COUNT["refused"] += 1
    return error


# ---- bad values -------------------------------------------------------------------------------------------

JUNK = st.one_of(st.text(max_size=4), st.binary(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.builds(object))


def bad_whole(lo: int | None, hi: int | None, none_ok: bool = False):
    """Not a whole number in ``lo..hi``: out of range, a float (even 3.0), a bool, text, junk."""
    options = [st.floats(allow_nan=True, allow_infinity=True), st.booleans(), JUNK]
    if lo is not None:
        options.append(st.integers(max_value=lo - 1))
    if hi is not None:
        options.append(st.integers(min_value=hi + 1))
    if not none_ok:
        options.append(st.none())
    return st.one_of(options)


def bad_real(lo: float | None, hi: float | None, lo_open: bool = False):
    """Not a finite number in the range: NaN, infinities, out of range, a bool, text, junk, None."""
    options = [st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans(), JUNK, st.none()]
    if lo is not None:
        below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False)
        options.append(below)
    if hi is not None:
        options.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False))
    return st.one_of(options)


def lone_surrogate():
    return st.builds(lambda a, code, b: a + chr(code) + b, st.text(max_size=3), st.integers(0xD800, 0xDFFF),
                     st.text(max_size=3))


def bad_text(none_ok: bool = False):
    """Not text (numbers, bytes, junk) or not valid UTF-8 (a lone surrogate)."""
    options = [st.integers(), st.floats(), st.binary(min_size=1, max_size=4), lone_surrogate(),
               st.lists(st.text(max_size=2), max_size=2), st.booleans()]
    return st.one_of(options if none_ok else options + [st.none()])


def bad_flag():
    return st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none(), JUNK)


def bad_callable():
    return st.one_of(st.integers(), st.text(max_size=3), st.floats(), st.booleans(), st.lists(st.integers(),
                                                                                              max_size=2))


def _tensor(rows, values, dtype=torch.long):
    return torch.tensor([values] * rows, dtype=dtype)


def bad_ids(lists_ok: bool = False, reserve: int = 0):
    """Token ids that are not ``[1, P]`` integer ids of the tiny model within its context."""
    ok_id = st.integers(0, VOCAB - 1)
    row = st.lists(ok_id, min_size=1, max_size=6)
    options = [
        st.builds(lambda r: _tensor(1, r, torch.float32), row),                       # float
        st.builds(lambda r, n: _tensor(n, r), row, st.integers(2, 3)),                 # batch > 1
        st.builds(lambda r, bad: _tensor(1, r + [bad]), row, st.integers(-2**40, -1)),          # negative
        st.builds(lambda r, bad: _tensor(1, r + [bad]), row, st.integers(VOCAB, 2**40)),      # past the vocab
        st.builds(lambda n: torch.zeros(1, n, dtype=torch.long), st.integers(CONTEXT - reserve + 1, CONTEXT + 64)),
        st.just(torch.zeros(1, 0, dtype=torch.long)),                                 # empty
        st.builds(lambda r: _tensor(1, r)[None], row),                                 # 3-D
        st.text(max_size=4), st.none(), st.floats(),
    ]
    if lists_ok:
        options += [st.builds(lambda r, bad: r + [bad], row, st.one_of(st.integers(max_value=-1),
                                                                          st.integers(min_value=VOCAB),
                                                                          st.floats(), st.booleans(),
                                                                          st.none())),
                    st.builds(lambda n: [0] * n, st.integers(CONTEXT - reserve + 1, CONTEXT + 64)),
                    st.builds(lambda r, n: [r] * n, row, st.integers(2, 3)),  # several rows
                    st.just([])]
    else:
        options += [st.builds(lambda r: _tensor(1, r)[0], row), row, st.builds(lambda r: np.array([r]), row)]
    return st.one_of(options)


def bad_index(size: int, from_end: bool = False):
    lo = -size if from_end else 0
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=size), st.booleans(), st.floats(),
                     st.text(max_size=2), st.none())


def bad_path(tmp: str):
    """A place no figure can be saved: a folder, a name ending in a separator, an unknown format, a folder
    below a file, not a path at all."""
    import os

    folder = os.path.join(tmp, "figures")
    os.makedirs(folder, exist_ok=True)
    a_file = os.path.join(tmp, "a-file")
    open(a_file, "w").close()
    return st.one_of(st.just(folder), st.just(folder + "/"), st.just(os.path.join(tmp, "plot.xyz")),
                     st.just(os.path.join(a_file, "plot.png")), st.integers(), st.lists(st.text(max_size=2),
                                                                                           min_size=1, max_size=2),
                     st.builds(lambda s: os.path.join(tmp, "x" + s + ".png"), lone_surrogate()))


# ---- the calls ----------------------------------------------------------------------------------------------

def capture_calls():
    from openmav.capture import CaptureConfig, SamplingConfig, generate_steps, logit_lens

    lm = world().lm

    def gen(**kw):
        args = {"prompt": "hello world", "max_new_tokens": NEW, **kw}
        if "input_ids" in kw:
            args.pop("prompt")
        return generate_steps(args.pop("lm", lm), **args)

    return {
        "generate_steps.lm": (st.one_of(bad_text(), st.integers(), JUNK), lambda v: gen(lm=v)),
        "generate_steps.prompt": (st.one_of(bad_text(none_ok=True), st.sampled_from(["", "   ", "\n"])),
                                  lambda v: gen(prompt=v)),
        "generate_steps.max_new_tokens": (bad_whole(1, 1_000_000), lambda v: gen(max_new_tokens=v)),
        "generate_steps.sampling": (st.one_of(st.text(max_size=6), st.integers(), JUNK), lambda v: gen(sampling=v)),
        "generate_steps.capture": (st.one_of(st.text(max_size=6), st.integers(), JUNK), lambda v: gen(capture=v)),
        "generate_steps.stop_at_eos": (bad_flag(), lambda v: gen(stop_at_eos=v)),
        "generate_steps.input_ids": (bad_ids(reserve=NEW).filter(lambda v: v is not None), lambda v: gen(input_ids=v)),
        "SamplingConfig.temperature": (bad_real(0.0, None), lambda v: SamplingConfig(temperature=v)),
        "SamplingConfig.top_k": (bad_whole(0, 2**31 - 1), lambda v: SamplingConfig(top_k=v)),
        "SamplingConfig.top_p": (bad_real(0.0, 1.0, lo_open=True), lambda v: SamplingConfig(top_p=v)),
        "SamplingConfig.min_p": (bad_real(0.0, 1.0), lambda v: SamplingConfig(min_p=v)),
        "SamplingConfig.repetition_penalty": (bad_real(0.0, None, lo_open=True),
                                              lambda v: SamplingConfig(repetition_penalty=v)),
        "SamplingConfig.seed": (bad_whole(0, 2**64 - 1, none_ok=True), lambda v: SamplingConfig(seed=v)),
        "CaptureConfig.attention": (bad_flag(), lambda v: CaptureConfig(attention=v)),
        "CaptureConfig.lens_top_k": (bad_whole(1, 1_000_000), lambda v: CaptureConfig(lens_top_k=v)),
        "CaptureConfig.lens_batch": (bad_whole(1, 4096), lambda v: CaptureConfig(lens_batch=v)),
        "CaptureConfig.lens_in_background": (bad_flag().filter(lambda v: v is not None),
                                             lambda v: CaptureConfig(lens_in_background=v)),
        "logit_lens.resid": (st.one_of(st.builds(lambda n: torch.zeros(2, n), st.integers(1, 63)),
                                       st.just(torch.zeros(2, 64, dtype=torch.long)), st.text(max_size=3),
                                       st.integers()), lambda v: logit_lens(lm, v)),
    }


def backend_calls():
    from openmav.backends import load_model, wrap_model
    from openmav.processors.state_fetcher import StateFetcher
    from openmav.training import MAVCallback

    lm, backend = world().lm, world().backend
    not_a_device = st.text(max_size=8).filter(lambda s: not __import__("openmav.rules").rules.DEVICE.match(s))
    return {
        "load_model.name": (st.one_of(bad_text(none_ok=True), st.sampled_from(["", " ", "\t"])),
                            lambda v: load_model(v)),
        "load_model.device": (st.one_of(not_a_device, st.integers(), JUNK.filter(lambda v: not isinstance(v, str))),
                              lambda v: load_model("some-model", device=v)),
        "load_model.dtype": (st.one_of(st.sampled_from(["float64", "int8", "half", ""]), st.integers()),
                             lambda v: load_model("some-model", dtype=v)),
        "load_model.progress": (bad_callable(), lambda v: load_model("some-model", progress=v)),
        "load_model.reverify": (bad_flag(), lambda v: load_model("some-model", reverify=v)),
        "wrap_model.name": (st.one_of(bad_text(), st.just("")), lambda v: wrap_model(lm.model, lm.tokenizer, name=v)),
        "wrap_model.verify": (bad_flag(), lambda v: wrap_model(lm.model, lm.tokenizer, verify=v)),
        "wrap_model.device": (st.one_of(not_a_device, st.integers()), lambda v: wrap_model(lm.model, lm.tokenizer,
                                                                                           device=v)),
        "TransformersBackend.generate.input_ids": (bad_ids(), lambda v: backend.generate(v)),
        "TransformersBackend.decode.token_ids": (bad_ids(lists_ok=True), lambda v: backend.decode(v)),
        "StateFetcher.stop_at_eos": (bad_flag(), lambda v: StateFetcher(backend, stop_at_eos=v)),
        "StateFetcher.max_new_tokens": (bad_whole(1, 1_000_000), lambda v: StateFetcher(backend, v)),
        "MAVCallback.every_n_steps": (bad_whole(0, None), lambda v: MAVCallback(lm.tokenizer, every_n_steps=v)),
    }


def intervention_calls():
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

    w = world()
    lm, ids, corrupt = w.lm, w.ids, w.corrupt
    metric = logit_diff(5, 6)

    def abl(**kw):
        return ablated_logits(lm, ids, [HeadAblation(**{"layer": 1, "head": 1, **kw})])

    def entered(cm):
        with cm:
            pass

    return {
        "HeadAblation.layer": (bad_index(LAYERS), lambda v: abl(layer=v)),
        "HeadAblation.head": (bad_index(HEADS), lambda v: abl(head=v)),
        "HeadAblation.kind": (st.one_of(st.text(max_size=6).filter(lambda s: s not in ("zero", "mean", "scale",
                                                                                        "permute", "sparsify")),
                                        st.integers(), st.none()), lambda v: abl(kind=v)),
        "HeadAblation.factor": (bad_real(-1000.0, 1000.0), lambda v: abl(kind="scale", factor=v)),
        "HeadAblation.threshold": (bad_real(0.0, None), lambda v: abl(kind="sparsify", threshold=v)),
        "HeadAblation.seed": (bad_whole(0, 2**64 - 1), lambda v: abl(kind="permute", seed=v)),
        "HeadAblation.positions": (st.one_of(st.just(()), st.lists(st.integers(ids.shape[1], 10**6), min_size=1,
                                                                   max_size=2).map(tuple),
                                             st.lists(st.integers(max_value=-1), min_size=1, max_size=2).map(tuple),
                                             st.integers(), st.text(min_size=1, max_size=3)),
                                   lambda v: abl(positions=v)),
        "ablated_logits.input_ids": (bad_ids(lists_ok=True), lambda v: ablated_logits(lm, v, [])),
        "ablated_logits.ablations": (st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2),
                                               st.text(min_size=1, max_size=3)),
                                     lambda v: ablated_logits(lm, ids, v)),
        "ablated_logits.reference_ids": (bad_ids(lists_ok=True).filter(lambda v: v is not None),
                                         lambda v: ablated_logits(lm, ids, [HeadAblation(0, 0, "mean")], v)),
        "head_means.reference_ids": (bad_ids(lists_ok=True), lambda v: head_means(lm, v)),
        "ablate_heads.means": (st.one_of(st.builds(lambda n: torch.zeros(LAYERS, HEADS, n), st.integers(1, 15)),
                                         st.integers(), st.text(max_size=2)),
                               lambda v: entered(ablate_heads(lm, [HeadAblation(0, 0, "mean")], means=v))),
        "evaluate_all_heads.batch_size": (bad_whole(1, 4096), lambda v: evaluate_all_heads(lm, ids, batch_size=v)),
        "evaluate_all_heads.tokens": (st.one_of(st.tuples(st.integers(VOCAB), st.integers(0, 3)),
                                                st.tuples(st.integers(max_value=-1), st.integers(0, 3)),
                                                st.tuples(st.booleans(), st.integers(0, 3)),
                                                st.lists(st.integers(0, 9), min_size=3, max_size=4),
                                                st.integers(), st.text(min_size=1, max_size=2)),
                                      lambda v: evaluate_all_heads(lm, ids, tokens=v)),
        "evaluate_all_heads.cancel": (st.one_of(st.integers(), st.text(min_size=1, max_size=2), st.booleans()),
                                      lambda v: evaluate_all_heads(lm, ids, cancel=v)),
        "evaluate_all_heads.on_batch": (bad_callable(), lambda v: evaluate_all_heads(lm, ids, on_batch=v)),
        "evaluate_all_heads.factor": (bad_real(-1000.0, 1000.0), lambda v: evaluate_all_heads(lm, ids, "scale",
                                                                                              factor=v)),
        "generic_study.max_heads": (bad_whole(1, 1_000_000), lambda v: generic_study(lm, ids, max_heads=v)),
        "generic_study.candidates": (bad_whole(1, 1_000_000), lambda v: generic_study(lm, ids, candidates=v)),
        "generic_study.k": (bad_whole(1, VOCAB), lambda v: generic_study(lm, ids, k=v)),
        "generic_study.progress": (bad_callable(), lambda v: generic_study(lm, ids, progress=v)),
        "targeted_study.target_id": (st.one_of(st.integers(max_value=-1), st.integers(min_value=VOCAB),
                                               st.booleans(), st.floats(), st.text(max_size=2)),
                                     lambda v: targeted_study(lm, ids, target_id=v)),
        "logit_diff_study.token_a": (st.one_of(st.integers(max_value=-1), st.integers(min_value=VOCAB),
                                               st.booleans(), st.floats()),
                                     lambda v: logit_diff_study(lm, ids, v, 3)),
        "logit_diff.token_a": (st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.text(max_size=2),
                                         st.none()), lambda v: logit_diff(v, 6)),
        "token_prob.token": (st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.none()),
                             lambda v: token_prob(v)),
        "single_token.text": (st.one_of(bad_text(), st.just("")), lambda v: single_token(lm, v)),
        "swap_names.prompt": (bad_text(), lambda v: swap_names(v)),
        "swap_names.tokenizer": (st.one_of(st.integers(), st.text(min_size=1, max_size=3)),
                                 lambda v: swap_names("When Mary and John went out", v)),
        "pair_tokens.corrupt_ids": (bad_ids(lists_ok=True), lambda v: pair_tokens(lm, ids, v)),
        "attribution_patching.metric": (st.one_of(st.integers(), st.text(max_size=2), st.none(),
                                                  st.builds(logit_diff, st.integers(VOCAB, 10**6), st.just(1))),
                                        lambda v: attribution_patching(lm, ids, corrupt, v)),
        "verify_by_ablation.heads": (st.one_of(st.lists(st.tuples(st.integers(LAYERS, 99), st.integers(0, 3)),
                                                        min_size=1, max_size=2),
                                               st.lists(st.tuples(st.integers(0, 1), st.integers(HEADS, 99)),
                                                        min_size=1, max_size=2),
                                               st.lists(st.integers(), min_size=1, max_size=2), st.integers()),
                                     lambda v: verify_by_ablation(lm, ids, corrupt, metric, v)),
        "discover_circuit.top_n": (bad_whole(1, LAYERS * HEADS), lambda v: discover_circuit(lm, ids, corrupt, metric,
                                                                                            top_n=v)),
        "discover_circuit.batch_size": (bad_whole(1, 4096), lambda v: discover_circuit(lm, ids, corrupt, metric,
                                                                                       batch_size=v)),
        "discover_circuit.progress": (bad_callable(), lambda v: discover_circuit(lm, ids, corrupt, metric,
                                                                                 progress=v)),
        "correlation.x": (st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.none(),
                                    st.lists(st.floats(allow_nan=False), min_size=4, max_size=5),
                                    st.lists(st.text(min_size=1, max_size=2), min_size=3, max_size=3),
                                    st.lists(st.booleans(), min_size=3, max_size=3),
                                    st.lists(st.sampled_from([float("nan"), float("inf"), 1.0]), min_size=3,
                                             max_size=3).filter(lambda v: not all(x == 1.0 for x in v))),
                          lambda v: correlation(v, [1.0, 2.0, 3.0])),
        "direct_logit_attribution.token": (st.one_of(st.integers(max_value=-1), st.integers(min_value=VOCAB),
                                                     st.booleans(), st.floats()),
                                           lambda v: direct_logit_attribution(lm, ids, v)),
        "direct_logit_attribution.position": (st.one_of(st.integers(max_value=-1), st.integers(ids.shape[1]),
                                                        st.booleans(), st.floats()),
                                              lambda v: direct_logit_attribution(lm, ids, 3, v)),
    }


def analysis_calls(tmp: str):
    from openmav import MAV
    from openmav.analysis.extractor import AttentionExtractor
    from openmav.analysis.head_scores import compute_head_scores
    from openmav.analysis.visualizer import AttentionVisualizer

    w = world()
    lm, ex, res, viz = w.lm, w.ex, w.res, w.viz
    not_a_device = st.text(max_size=8).filter(lambda s: not __import__("openmav.rules").rules.DEVICE.match(s))

    def mav(**kw):
        return MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, prompt="hello", max_new_tokens=2,
                   format="text", **kw)

    return {
        "AttentionExtractor.model_name": (st.one_of(bad_text(none_ok=True), st.just("")),
                                          lambda v: AttentionExtractor(model_name=v)),
        "AttentionExtractor.device": (st.one_of(not_a_device, st.integers()),
                                      lambda v: AttentionExtractor("some-model", device=v)),
        "AttentionExtractor.dtype": (st.one_of(st.sampled_from(["float64", "half", ""]), st.integers(), st.none()),
                                     lambda v: AttentionExtractor("some-model", dtype=v)),
        "extract_activations.prompt": (st.one_of(bad_text(), st.sampled_from(["", "  "])),
                                       lambda v: ex.extract_activations(v)),
        "get_attention_stats.threshold": (bad_real(0.0, 1.0), lambda v: ex.get_attention_stats("hi there", v)),
        "compare_prompts.prompts": (st.one_of(st.integers(), st.lists(bad_text(), min_size=1, max_size=2),
                                              st.just([])), lambda v: ex.compare_prompts(v)),
        "compare_prompts.batch_size": (bad_whole(1, 4096), lambda v: ex.compare_prompts(["a b", "c d"], v)),
        "compare_prompts.padding_side": (st.one_of(st.text(max_size=5).filter(lambda s: s not in ("left", "right")),
                                                   st.integers()),
                                         lambda v: ex.compare_prompts(["a b", "c d"], padding_side=v)),
        "get_neuron_activations.layer_idx": (bad_index(LAYERS, from_end=True),
                                             lambda v: ex.get_neuron_activations("hi there", v)),
        "get_neuron_activations.residual": (bad_flag(), lambda v: ex.get_neuron_activations("hi there", 0, v)),
        "compare.compare_prompts.positions": (st.text(max_size=6).filter(lambda s: s not in ("aligned", "all")),
                                              lambda v: w.compare.compare_prompts(ex, ["a b", "c d"], positions=v)),
        "compare.compare_prompts.skip_first": (bad_flag(), lambda v: w.compare.compare_prompts(ex, ["a b", "c d"],
                                                                                               skip_first=v)),
        "compare.differences.top_k": (st.one_of(st.integers(max_value=0), st.booleans(), st.floats()),
                                      lambda v: w.compare.differences(w.pc, top_k=v)),
        "compute_head_scores.seq_len": (st.one_of(bad_whole(2, 1_000_000), st.integers(300, 10**6)),
                                        lambda v: compute_head_scores(lm, seq_len=v)),
        "compute_head_scores.batch": (bad_whole(1, 4096), lambda v: compute_head_scores(lm, batch=v)),
        "AttentionVisualizer.cmap": (st.one_of(st.text(max_size=6).filter(lambda s: s not in __import__(
            "matplotlib").colormaps), st.integers(), st.none()), lambda v: AttentionVisualizer(cmap=v)),
        "AttentionVisualizer.dpi": (bad_real(1.0, 600.0), lambda v: AttentionVisualizer(dpi=v)),
        "plot_all_heads.save_path": (bad_path(tmp), lambda v: viz.plot_all_heads(res.attention, res.tokens, 0, v)),
        "plot_all_heads.layer_idx": (bad_index(LAYERS, from_end=True),
                                     lambda v: viz.plot_all_heads(res.attention, res.tokens, v)),
        "plot_attention_heatmap.head_idx": (bad_index(HEADS, from_end=True),
                                            lambda v: viz.plot_attention_heatmap(res.attention, res.tokens, 0, v)),
        "plot_attention_heatmap.tokens": (st.one_of(st.integers(), st.none(), st.text(min_size=1, max_size=3)),
                                          lambda v: viz.plot_attention_heatmap(res.attention, v)),
        "plot_head_scores.save_path": (bad_path(tmp), lambda v: viz.plot_head_scores(w.scores, v)),
        "plot_layer_statistics.save_path": (bad_path(tmp), lambda v: viz.plot_layer_statistics(w.stats, v)),
        "plot_interactive_attention.layers": (st.one_of(st.lists(st.integers(LAYERS, 10**6), min_size=1, max_size=2),
                                                        st.lists(st.integers(max_value=-LAYERS - 1), min_size=1,
                                                                 max_size=2),
                                                        st.lists(st.booleans(), min_size=1, max_size=2),
                                                        st.integers(), st.text(min_size=1, max_size=2)),
                                              lambda v: viz.plot_interactive_attention(res, layers=v)),
        "plot_interactive_attention.save_path": (bad_path(tmp).filter(lambda v: not str(v).endswith(".xyz")),
                                                 lambda v: viz.plot_interactive_attention(res, v)),
        "MAV.max_new_tokens": (bad_whole(1, 1_000_000), lambda v: MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer,
                                                                      max_new_tokens=v, format="text")),
        "MAV.temp": (bad_real(0.0, None), lambda v: mav(temp=v)),
        "MAV.top_p": (bad_real(0.0, 1.0, lo_open=True), lambda v: mav(top_p=v)),
        "MAV.seed": (bad_whole(0, 2**64 - 1, none_ok=True), lambda v: mav(seed=v)),
        "MAV.prompt": (bad_text(none_ok=True), lambda v: MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer,
                                                             prompt=v, format="text")),
        "MAV.model": (st.one_of(bad_text(none_ok=True), st.just("")), lambda v: MAV(v, "hi", format="text")),
    }


def drive(calls: dict, data) -> None:
    """One example: every call of the table, each with a bad value drawn for its argument."""
    for name in sorted(calls):
        strategy, call = calls[name]
        value = data.draw(strategy, label=name)
        refused(lambda call=call, value=value: call(value), name)


@SETTINGS
@given(st.data())
def test_capture_and_backends_refuse_bad_arguments(data):
    drive({**capture_calls(), **backend_calls()}, data)


@SETTINGS
@given(st.data())
def test_interventions_refuse_bad_arguments(data):
    drive(intervention_calls(), data)


@SETTINGS
@given(st.data())
def test_analysis_and_mav_refuse_bad_arguments(tmp_path_factory, data):
    drive(analysis_calls(str(tmp_path_factory.getbasetemp())), data)


def test_the_issue_cases_one_by_one():
    """The calls issue 21 lists, each refused with its argument, range and value in the message."""
    from openmav.analysis.visualizer import AttentionVisualizer
    from openmav.backends import load_model
    from openmav.capture import SamplingConfig, generate_steps
    from openmav.interventions import HeadAblation, ablated_logits, logit_diff

    w = world()
    lm, ex, res = w.lm, w.ex, w.res
    long_ids = torch.ones(1, CONTEXT + 5, dtype=torch.long)
    cases = [
        (lambda: generate_steps(lm, input_ids=long_ids), "input_ids is 517 tokens and 50 new tokens"),
        (lambda: generate_steps(lm, input_ids=torch.ones(8, dtype=torch.long)), "got shape [8]"),
        (lambda: generate_steps(lm, input_ids=torch.ones(1, 8)), "got dtype float32"),
        (lambda: generate_steps(lm, input_ids=-torch.ones(1, 8, dtype=torch.long)),
         "token id -1: valid token ids are 0..399"),
        (lambda: generate_steps(lm, input_ids=torch.full((1, 4), VOCAB)), "token id 400"),
        (lambda: generate_steps(lm, input_ids=torch.ones(2, 4, dtype=torch.long)), "got shape [2, 4]"),
        (lambda: generate_steps(lm, input_ids=[[1, 2, 3]]), "got a list"),
        (lambda: generate_steps(lm, "hi", max_new_tokens=2.5), "max_new_tokens must be a whole number"),
        (lambda: generate_steps(lm, "hi", max_new_tokens=math.nan), "got nan"),
        (lambda: generate_steps(lm, "hi", max_new_tokens="5"), "got '5'"),
        (lambda: SamplingConfig(temperature=math.nan), "temperature must be a finite number >= 0"),
        (lambda: SamplingConfig(temperature=math.inf), "got inf"),
        (lambda: SamplingConfig(seed="abc"), "seed must be a whole number"),
        (lambda: generate_steps(lm, "hi", sampling="greedy"), "sampling must be a SamplingConfig"),
        (lambda: generate_steps(lm, 7), "prompt must be text, got int"),
        (lambda: ex.extract_activations("x\ud800y"), "lone surrogate"),
        (lambda: ablated_logits(lm, torch.ones(1, CONTEXT + 2, dtype=torch.long), []), "context of 512 tokens"),
        (lambda: ablated_logits(lm, w.ids, [HeadAblation(0, 0, "scale", factor=1e300)]),
         "scale factor must be a number in [-1000, 1000]"),
        (lambda: logit_diff(-1, 6), "token_a must be at least 0"),
        (lambda: w.viz.plot_interactive_attention(res, layers=[99]), "the 2 layers are 0..1"),
        (lambda: ex.get_neuron_activations("hi there", True), "valid indices are 0..1"),
        (lambda: load_model(""), "name is empty"),
        (lambda: w.viz.plot_all_heads(res.attention, res.tokens, 0, save_path=str(world_tmp())), "is a folder"),
        (lambda: AttentionVisualizer(cmap="no-such-map"), "cmap must be a matplotlib colormap"),
        (lambda: AttentionVisualizer(dpi=0), "dpi must be a number in [1, 600]"),
        (lambda: w.viz.plot_head_scores(w.scores, save_path=str(world_tmp() / "scores.xyz")), "unknown format '.xyz'"),
    ]
    for call, words in cases:
        error = refused(call, words.split()[0])
        assert words in str(error), (words, str(error))


def test_decode_takes_every_documented_form_and_refuses_the_rest():
    """``TransformersBackend.decode`` follows the rules of every token-id argument (vocabulary and context), and
    each documented form of one sequence decodes to the one string the tokenizer gives for its list of ids."""
    w = world()
    backend, tok = w.backend, w.lm.tokenizer
    ids = w.ids[0].tolist()
    text = tok.decode(ids)
    for form in (ids, tuple(ids), [ids], (tuple(ids),), [np.int64(i) for i in ids], w.ids, w.ids[0],
                 w.ids.to(torch.int32), np.array(ids), np.array([ids]), np.array(ids, dtype=np.int32)):
        assert backend.decode(form) == text, shown_form(form)
    special = [tok.eos_token_id] + ids
    assert backend.decode(special, skip_special_tokens=True) == tok.decode(special, skip_special_tokens=True)
    assert backend.decode(torch.zeros(1, CONTEXT, dtype=torch.long)) == tok.decode([0] * CONTEXT)  # a full context
    cases = [
        ([1, None], "got None"), ([None], "got None"), ([1, True], "got True"), ([1, 2.0], "got 2.0"),
        ([1, -1], "token id -1: valid token ids are 0..399"), ([VOCAB], "token id 400"),
        ([[1, 2], [3, 4]], "whole-number token ids, got [1, 2]"), ([[1], [2]], "got [1]"), ([], "is empty"),
        ([[]], "is empty"), ([0] * (CONTEXT + 1), "context of 512 tokens"),
        (torch.zeros(1, CONTEXT + 1, dtype=torch.long), "is 513 tokens, but the model has a context of 512"),
        (torch.ones(2, 3, dtype=torch.long), "got shape [2, 3]"), (torch.ones(1, 1, 3, dtype=torch.long), "[1, 1, 3]"),
        (torch.tensor(3), "got shape []"), (torch.ones(1, 3), "got dtype float32"),
        (torch.ones(3, dtype=torch.bool), "got dtype bool"), (np.ones(3), "got dtype float64"),
        (np.ones((2, 3), dtype=np.int64), "got shape [2, 3]"), (torch.empty(1, 3, dtype=torch.long, device="meta"),
                                                               "meta device"),
        (5, "got 5"), (True, "got True"), ("hello", "got 'hello'"), (None, "got None"),
    ]
    for value, words in cases:
        error = refused(lambda value=value: backend.decode(value), "token_ids")
        assert words in str(error), (words, str(error))


def shown_form(form) -> str:
    return f"{type(form).__name__} {getattr(form, 'dtype', '')}"


@functools.cache
def world_tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="openmav-rules-"))


def test_mav_model_flag_refuses_empty(capsys):
    from openmav.cli import main

    assert main(["--model", "", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "--model is empty" in err and len(err.strip().splitlines()) == 1


def test_memory_stays_bounded_over_the_runs():
    """The refused calls above allocated nothing large: the process's peak stays near the models' size."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert COUNT["refused"] == COUNT["tried"]
    print(f"\nbad API calls tried: {COUNT['tried']}, refused cleanly: {COUNT['refused']}; peak RSS {peak_mb:.0f} MB")


def test_past_the_context_on_smollm2_allocates_nothing(smollm2):
    """The call that once grew a process to 22 GB: refused before the forward, which a tripwire guards."""
    from openmav.capture import generate_steps
    from openmav.interventions import ablated_logits

    def tripwire(module, args, kwargs):
        raise AssertionError("a forward ran on ids past the context")

    handle = smollm2.model.register_forward_pre_hook(tripwire, with_kwargs=True)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for call in (lambda: generate_steps(smollm2, input_ids=torch.ones(1, 8197, dtype=torch.long)),
                     lambda: ablated_logits(smollm2, torch.ones(1, 8194, dtype=torch.long), [])):
            with pytest.raises(InputError, match="context of 8192 tokens"):
                call()
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB
    finally:
        handle.remove()
