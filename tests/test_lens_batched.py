"""The logit lens wherever it runs: batched over steps, on a worker thread or inline, the numbers are the same.

Speed is measured in ``bench/bench_peers.py``; these tests check what the speed work could
break: equal lens values, records in order each with its own lens, the newest token's lens
arriving promptly for the live view, and no thread left behind by an interrupted generation.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from openmav.capture import CaptureConfig, generate_steps
from openmav.capture import lens as lens_mod
from openmav.capture.hooks import attention_implementation
from openmav.capture.lens import LensQueue, lens_placement, lens_top, top_k

PROMPT = "When Mary and John went to the store, John gave"
FAMILIES = ["llama", "gpt2", "gemma3", "gpt_neox", "mixtral"]
# (in the background?, steps per lens product)
PLACES = [(False, 4), (True, 1), (True, 3)]


def lens_threads():
    return [t for t in threading.enumerate() if t.name.startswith("openmav-lens")]


def records(lm, n=7, **capture):
    return list(generate_steps(lm, PROMPT, n, stop_at_eos=False, capture=CaptureConfig(**capture)))


def assert_same_lens(expected, got):
    assert [r.step for r in got] == [r.step for r in expected]
    assert [r.token.id for r in got] == [r.token.id for r in expected]
    for a, b in zip(expected, got):
        assert b.lens_ids.shape == a.lens_ids.shape
        assert b.lens_ids.tolist() == a.lens_ids.tolist()
        np.testing.assert_allclose(b.lens_probs, a.lens_probs, atol=1e-6, rtol=0)
        assert [[t.id for t in row] for row in b.lens_tokens] == b.lens_ids.tolist()


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    assert not lens_threads(), "a lens worker thread outlived its generation"


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_and_background_lens_equal_inline(tiny, family):
    lm = tiny(family)
    inline = records(lm, lens_in_background=False, lens_batch=1)
    assert all(r.lens_ids.shape == (lm.parts.n_layers, 5) for r in inline)
    for background, batch in PLACES:
        assert_same_lens(inline, records(lm, lens_in_background=background, lens_batch=batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_equals_a_recomputation_from_the_residuals(tiny, family):
    """Every layer's lens (the last one copied from the record's own distribution) equals the
    model's final norm and unembedding applied to the hooks' residuals, one product per step."""
    lm = tiny(family)
    got = records(lm, n=4, lens_in_background=False, lens_batch=2)
    prompt_ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    ids = torch.cat([prompt_ids, torch.tensor([[r.token.id for r in got]])], 1)
    with torch.inference_mode(), attention_implementation(lm.model, "eager"):
        out = lm.model(input_ids=ids[:, :-1], output_hidden_states=True, use_cache=False)
    for r in got:
        # hidden_states[l + 1] is block l's output, except the last, which some models return normed
        resid = torch.stack([out.hidden_states[i + 1][0, r.position] for i in range(lm.parts.n_layers - 1)])
        with torch.inference_mode():
            lens = torch.softmax(lm.parts.lens(resid).double(), -1)  # independent of lens_top's arithmetic
        top = torch.topk(lens, 5)
        assert r.lens_ids[:-1].tolist() == top.indices.tolist()
        np.testing.assert_allclose(r.lens_probs[:-1], top.values.numpy(), atol=1e-5)
        model = torch.softmax(out.logits[0, r.position].float(), -1)
        assert r.lens_ids[-1].tolist() == torch.topk(model, 5).indices.tolist()
        np.testing.assert_allclose(r.lens_probs[-1], torch.topk(model, 5).values.numpy(), atol=1e-5)


def test_lens_top_is_the_softmax_top_k(tiny):
    """The in-place normaliser gives the softmax's probabilities (1e-6), on rows far apart in scale."""
    lm = tiny("gemma3")  # final soft-capping, a scaled embedding
    d = lm.parts.unembed.weight.shape[1]
    resid = torch.randn(6, d, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1], [10], [100],
                                                                                         [1e3], [1e4]])
    ids, probs = lens_top(lm, resid, 7)
    with torch.inference_mode():
        ref = torch.topk(torch.softmax(lm.parts.lens(resid).double(), -1), 7)
    assert ids.tolist() == ref.indices.tolist()
    np.testing.assert_allclose(probs.numpy(), ref.values.numpy(), atol=1e-6, rtol=0)
    assert ids.dtype == torch.int64 and probs.dtype == torch.float32


def test_a_batch_over_the_memory_cap_runs_as_several_products_with_the_same_result(tiny, monkeypatch):
    lm = tiny("llama")
    d = lm.parts.unembed.weight.shape[1]
    resid = torch.randn(23, d, generator=torch.Generator().manual_seed(1))
    whole_ids, whole_probs = lens_top(lm, resid, 5)
    vocab = lm.parts.unembed.weight.shape[0]
    monkeypatch.setattr(lens_mod, "LENS_BYTES", 4 * vocab * 4)  # four rows per product
    assert lens_mod.lens_rows(lm) == 4
    calls = []
    real = lens_mod._lens_top
    monkeypatch.setattr(lens_mod, "_lens_top", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    ids, probs = lens_top(lm, resid, 5)
    assert calls == [4, 4, 4, 4, 4, 3]
    assert ids.tolist() == whole_ids.tolist()
    np.testing.assert_allclose(probs.numpy(), whole_probs.numpy(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3", "cohere", "gpt2", "granite"])
def test_the_lens_over_vocabulary_slices_equals_one_product(tiny, family, monkeypatch):
    """Slices of the unembedding with a running top-k and an online normaliser (the CPU path for
    real vocabularies) give the one product's ids and probabilities; soft-cap and logit scales included."""
    lm = tiny(family)
    assert type(lm.parts.unembed) is torch.nn.Linear
    vocab, d = lm.parts.unembed.weight.shape
    monkeypatch.setattr(lens_mod, "VOCAB_SLICE", 37)  # several slices and a short last one
    assert vocab > 37 and vocab % 37
    resid = torch.randn(9, d, generator=torch.Generator().manual_seed(2)) * torch.logspace(-1, 3, 9)[:, None]
    assert lens_mod._sliceable(lm.parts.unembed, resid, 37)
    got_ids, got_probs = lens_mod._lens_top_sliced(lm, resid, 5, 37)
    ids, probs = lens_mod._lens_top(lm, resid, 5)
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(got_probs.numpy(), probs.numpy(), atol=1e-6, rtol=0)
    with torch.inference_mode():
        ref = torch.topk(torch.softmax(lm.parts.lens(resid).double(), -1), 5)
    np.testing.assert_allclose(got_probs.numpy(), ref.values.numpy(), atol=1e-6, rtol=0)
    sliced = [list(generate_steps(lm, "The cat sat on", 3, capture=CaptureConfig(lens_batch=2, lens_in_background=bg)))
              for bg in (False, True)]
    monkeypatch.setattr(lens_mod, "VOCAB_SLICE", 10 ** 9)  # the one-product path
    whole = list(generate_steps(lm, "The cat sat on", 3, capture=CaptureConfig(lens_batch=2)))
    for run in sliced:
        for a, b in zip(run, whole, strict=True):
            assert a.lens_ids.tolist() == b.lens_ids.tolist()
            np.testing.assert_allclose(a.lens_probs, b.lens_probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(7, 5000), (3, 49152 + 37), (30, 49152), (2, 400), (1, 262144)])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_the_two_pass_top_k_is_torch_topk(shape, k):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
    x[0, -1] = x.max() + 1  # the best entry in the tail that fills no block
    got, ref = top_k(x, k), torch.topk(x, k)
    assert torch.equal(got.values, ref.values) and torch.equal(got.indices, ref.indices)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_last_layer_copied_from_the_record_equals_its_product(tiny, family):
    lm = tiny(family)
    reused = records(lm, n=4, lens_in_background=False)
    assert lm.extra["lens_last_is_logits"] is True
    lm.extra["lens_last_is_logits"] = False  # the product for every layer, the last included
    try:
        computed = records(lm, n=4, lens_in_background=False)
    finally:
        lm.extra["lens_last_is_logits"] = True
    assert_same_lens(computed, reused)


@pytest.mark.parametrize("background,batch", [(False, 1), (False, 3), (True, 1), (True, 3)])
def test_records_arrive_in_order_each_with_its_lens(tiny, background, batch):
    lm = tiny("llama")
    forwards = []
    handle = lm.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        seen = []
        gen = generate_steps(lm, PROMPT, 8, stop_at_eos=False,
                             capture=CaptureConfig(lens_in_background=background, lens_batch=batch))
        for r in gen:
            assert r.lens_ids is not None and r.lens_probs is not None and r.lens_tokens is not None
            seen.append((r.step, len(forwards)))
    finally:
        handle.remove()
    assert [s for s, _ in seen] == list(range(8))
    n = len(forwards)  # the prefill and one forward per generated token but the last
    assert n == 8
    for step, done in seen:
        if batch == 1 and not background:
            assert done == step + 1  # the live view: the newest token's lens before the next forward
        elif batch == 1:
            assert done == min(step + 2, n)  # one forward later: its lens ran beside that forward
        else:
            assert done <= min((step // batch + 1 + background) * batch + 1, n)


def test_the_lens_of_a_short_generation_and_of_one_ending_at_eos(tiny):
    lm = tiny("llama")
    one = records(lm, n=1, lens_in_background=True, lens_batch=4)
    assert len(one) == 1 and one[0].lens_ids.shape[0] == lm.parts.n_layers
    eos = lm.tokenizer.eos_token_id
    gen = list(generate_steps(lm, PROMPT, 6, capture=CaptureConfig(lens_batch=4, lens_in_background=True)))
    assert all(r.lens_ids is not None for r in gen)
    assert gen[-1].finished and (len(gen) == 6 or gen[-1].token.id == eos)


@pytest.mark.parametrize("batch", [1, 3])
def test_an_interrupted_generation_leaves_no_thread(tiny, batch):
    lm = tiny("gpt2")
    before = set(threading.enumerate())
    capture = CaptureConfig(lens_in_background=True, lens_batch=batch)
    gen = generate_steps(lm, PROMPT, 20, stop_at_eos=False, capture=capture)
    for _ in range(2):
        next(gen)
    assert lens_threads(), "the lens was meant to run on a worker thread here"
    gen.close()  # the consumer stops (Ctrl-C in a view closes the generator)
    assert not lens_threads()
    with pytest.raises(KeyboardInterrupt):
        for r in generate_steps(lm, PROMPT, 20, stop_at_eos=False, capture=capture):
            if r.step == 4:
                raise KeyboardInterrupt
    assert not lens_threads()
    gen = generate_steps(lm, PROMPT, 20, stop_at_eos=False, capture=capture)
    next(gen)
    next(gen)
    del gen  # abandoned: neither closed nor exhausted
    gc.collect()
    assert not lens_threads()
    assert set(threading.enumerate()) <= before


def test_a_failing_lens_fails_the_generation_and_stops_the_worker(tiny, monkeypatch):
    lm = tiny("llama")

    def broken(*args):
        raise RuntimeError("lens failed")

    monkeypatch.setattr(lens_mod, "lens_top", broken)
    with pytest.raises(RuntimeError, match="lens failed"):
        records(lm, n=6, lens_in_background=True, lens_batch=2)
    assert not lens_threads()


def test_placement_follows_the_spare_cores(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setattr(lens_mod, "available_cores", lambda: 2 * threads)
    assert lens_placement("cpu") is True  # the worker's pool fits beside the loop's
    monkeypatch.setattr(lens_mod, "available_cores", lambda: 1)
    assert lens_placement("cpu") is False  # one core: nothing to overlap
    monkeypatch.setattr(lens_mod, "available_cores", lambda: max(2, threads))
    assert lens_placement("cpu") is None  # torch's threads fill the machine: measured in the first steps
    assert lens_placement("cuda") is False  # queued on the device after the forward


@pytest.mark.parametrize("cores,loop,worker", [(2, 1, 1), (3, 2, 1)])
def test_the_worker_and_the_loop_split_the_cores(tiny, monkeypatch, cores, loop, worker):
    """With torch's 2 threads on 2 cores, the loop gives one up to the worker while it runs; with a
    spare core, the worker takes it and the loop keeps both.  The caller's setting is in place
    whenever a record is handed over, and after an interrupted generation."""
    if not lens_mod.per_thread_counts():
        pytest.skip("this torch has one thread count for the whole process")
    lm = tiny("llama")
    inline = records(lm, n=6, lens_in_background=False)
    monkeypatch.setattr(lens_mod, "available_cores", lambda: cores)
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    seen_loop, seen_worker, between = [], [], []
    real = lens_mod.lens_top

    def spy(*args, **kwargs):
        seen_worker.append((threading.current_thread().name, torch.get_num_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(lens_mod, "lens_top", spy)
    hook = lm.model.model.layers[0].register_forward_hook(lambda *a: seen_loop.append(torch.get_num_threads()))
    try:
        got = []
        for record in generate_steps(lm, PROMPT, 6, stop_at_eos=False, capture=CaptureConfig(lens_in_background=True)):
            between.append(torch.get_num_threads())
            got.append(record)
        gen = generate_steps(lm, PROMPT, 6, stop_at_eos=False, capture=CaptureConfig(lens_in_background=True))
        next(gen), next(gen)
        gen.close()
        after_close = torch.get_num_threads()
    finally:
        hook.remove()
        torch.set_num_threads(caller)
    assert_same_lens(inline, got)
    assert between == [2] * 6 and after_close == 2
    assert seen_loop[0] == 2 and seen_loop[-1] == loop and set(seen_loop) <= {2, loop}
    assert seen_worker and all(name.startswith("openmav-lens") and n == worker for name, n in seen_worker)


def test_one_thread_count_for_the_process_means_no_split(monkeypatch):
    """Where torch's thread count is not per thread (a native pool), the worker cannot take a share
    of its own: the loop keeps its threads and the worker is left as torch starts it."""
    monkeypatch.setattr(lens_mod, "per_thread_counts", lambda: False)
    monkeypatch.setattr(lens_mod, "available_cores", lambda: 2)
    assert lens_mod.split_threads(2) == (None, None)
    monkeypatch.setattr(lens_mod, "per_thread_counts", lambda: True)
    assert lens_mod.split_threads(2) == (1, 1) and lens_mod.split_threads(1) == (1, None)


def queue_records(lm, n):
    """Records without a lens, with their residuals and logits, to feed a LensQueue by hand."""
    recs = records(lm, n=n, logit_lens=False)
    gen = torch.Generator().manual_seed(1)
    d = lm.parts.unembed.weight.shape[1]
    return [(r, torch.randn(lm.parts.n_layers, d, generator=gen), torch.from_numpy(r.logits)) for r in recs]


@pytest.mark.parametrize("loop_ms,worker_ms,expected", [(20.0, 12.0, True), (12.0, 20.0, False)])
def test_a_measured_placement_keeps_the_faster(tiny, loop_ms, worker_ms, expected):
    lm = tiny("llama")
    items = queue_records(lm, 14)
    now = [0.0]
    queue = LensQueue(lm, 5, batch=1, background=None, clock=lambda: now[0])
    out, placements = [], []
    try:
        for i, (record, resid, logits) in enumerate(items):
            out += queue.push(record, resid, logits)
            placements.append(queue.background)  # where this push's lens ran
            now[0] += (worker_ms if queue.background else loop_ms) / 1000  # the time until the next push
        out += queue.flush()
    finally:
        queue.close()
    assert placements[:5] == [False] * 5 and queue.step_ms[False] == pytest.approx([loop_ms] * 4)
    assert placements[5:11] == [True] * 6 and queue.step_ms[True] == pytest.approx([worker_ms] * 4)
    assert queue.background is expected and not queue.measuring
    assert set(placements[11:]) == {expected}
    assert lm.extra["lens_placement"].startswith("worker thread" if expected else "step loop")
    assert [r.step for r in out] == list(range(14))  # in order across both switches
    direct = LensQueue(lm, 5, batch=1, background=False)
    expected_lens = [direct.push(r, x, g)[0] for r, x, g in queue_records(lm, 14)]
    for a, b in zip(expected_lens, out):
        assert a.lens_ids.tolist() == b.lens_ids.tolist()
        np.testing.assert_allclose(a.lens_probs, b.lens_probs, atol=1e-6, rtol=0)


def test_the_default_places_the_lens_as_the_machine_says(tiny, monkeypatch):
    lm = tiny("llama")
    inline = records(lm, n=14, lens_in_background=False)
    monkeypatch.setattr(lens_mod, "available_cores", lambda: 1)
    gen = generate_steps(lm, PROMPT, 5, stop_at_eos=False)
    next(gen)
    assert not lens_threads()  # one core: in the step loop, no worker thread
    gen.close()
    monkeypatch.setattr(lens_mod, "available_cores", lambda: 2 * torch.get_num_threads())
    gen = generate_steps(lm, PROMPT, 5, stop_at_eos=False)
    next(gen)
    assert lens_threads()  # spare cores: on the worker from the first step
    gen.close()
    monkeypatch.setattr(lens_mod, "available_cores", lambda: max(2, torch.get_num_threads()))
    lm.extra.pop("lens_placement", None)
    lm.extra.pop("lens_measured", None)
    measured = records(lm, n=14)  # the first steps try both placements, then keep one
    assert lm.extra["lens_placement"].split(" (")[0] in ("worker thread", "step loop")
    assert_same_lens(inline, measured)
    # the next generation keeps the measured placement without trying again ...
    memo = lm.extra["lens_measured"]
    assert lens_mod.remembered_placement(lm) is memo[2]
    assert_same_lens(inline, records(lm, n=14))
    assert lm.extra["lens_measured"] is memo
    # ... unless the torch threads changed, or the memory is stale
    monkeypatch.setattr(lens_mod, "PLACEMENT_MEMORY_S", 0.0)
    assert lens_mod.remembered_placement(lm) is None
    assert_same_lens(inline, records(lm, n=14))
    assert lm.extra["lens_measured"] is not memo  # measured again


def test_a_batch_below_one_is_refused(tiny):
    with pytest.raises(ValueError, match="lens batch"):
        LensQueue(tiny("llama"), 5, batch=0)


def _all_families():
    from test_families import DECLARED, HYBRID

    return [f for f in DECLARED + HYBRID if f not in ("bert", "bart")]  # the causal views' families


@pytest.mark.parametrize("family", _all_families())
def test_batched_background_lens_equals_inline_on_every_family(tiny, family):
    """Every supported family: the lens batched over steps on the worker thread equals the lens computed
    inline, step by step (top-k ids equal, probabilities 1e-6), records in order."""
    lm = tiny(family)
    inline = records(lm, n=5, lens_in_background=False, lens_batch=1)
    assert_same_lens(inline, records(lm, n=5, lens_in_background=True, lens_batch=3))


def test_the_record_stream_batches_its_lens_and_the_live_view_does_not(tiny):
    from openmav.backends.model_backend_transformers import TransformersBackend
    from openmav.mav import STREAM_LENS_BATCH, capture_config, stream_lens_batch
    from openmav.processors.state_fetcher import RECORDS_LENS_BATCH, StateFetcher

    lm = tiny("llama")
    backend = TransformersBackend("tiny-llama", model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu")
    fetcher = StateFetcher(backend, max_new_tokens=10, stop_at_eos=False)
    assert fetcher.records(PROMPT).gi_frame.f_locals["capture"].lens_batch == RECORDS_LENS_BATCH
    recs = list(fetcher.records(PROMPT))
    assert [r.step for r in recs] == list(range(10)) and all(r.lens_ids is not None for r in recs)
    live = list(fetcher.fetch_next(PROMPT))  # each token shown as it comes: its own lens at once
    assert fetcher.capture.lens_batch == 1
    for a, b in zip(recs, (m.record for m in live)):
        assert a.lens_ids.tolist() == b.lens_ids.tolist()
        np.testing.assert_allclose(a.lens_probs, b.lens_probs, atol=1e-6, rtol=0)

    class Console:
        is_terminal = False

    assert stream_lens_batch("jsonl", Console) == stream_lens_batch("text", Console) == STREAM_LENS_BATCH
    assert stream_lens_batch("auto", Console) == STREAM_LENS_BATCH  # not a terminal: text lines
    Console.is_terminal = True
    assert stream_lens_batch("auto", Console) == stream_lens_batch("live", Console) == 1
    assert stream_lens_batch("interactive", Console) == 1
    assert capture_config([], lens_batch=STREAM_LENS_BATCH).lens_batch == STREAM_LENS_BATCH
