"""Head scores: a planted previous-token / induction head is found; numbers equal a direct recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.analysis.head_scores import HeadScores, compute_head_scores, repeated_random_tokens
from openmav.capture.hooks import attention_implementation
from openmav.errors import InputError


def _plant(lm, layer: int, head: int, shift: int):
    """Replace head (layer, head)'s attention probabilities by a one-hot on key ``q - shift``."""
    def hook(module, args, output):
        out, weights = output[0], output[1]
        weights = weights.clone()
        q = weights.shape[-2]
        planted = torch.zeros(q, weights.shape[-1])
        for i in range(q):
            planted[i, max(i - shift, 0)] = 1.0
        weights[:, head] = planted
        return (out, weights, *output[2:])
    return lm.parts.attn[layer].register_forward_hook(hook)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_planted_previous_token_head(tiny, family):
    lm = tiny(family, n_layers=3)
    handle = _plant(lm, 1, 2, shift=1)
    try:
        scores = compute_head_scores(lm, seq_len=12, n_repeats=2, batch=2)
    finally:
        handle.remove()
    prev = scores.previous_token
    assert prev.shape == (3, 4)
    assert prev[1, 2] == pytest.approx(1.0, abs=1e-6)
    others = np.delete(prev.ravel(), 1 * 4 + 2)
    assert others.max() < 0.5
    assert scores.top("previous_token", 1)[0][:2] == (1, 2)
    assert scores.induction[1, 2] < 0.5  # a previous-token head is not an induction head


def test_planted_induction_head(tiny):
    lm = tiny("llama", n_layers=2)
    seq_len = 10
    handle = _plant(lm, 0, 3, shift=seq_len - 1)  # attend to i - T + 1
    try:
        scores = compute_head_scores(lm, seq_len=seq_len, n_repeats=2, batch=2)
    finally:
        handle.remove()
    assert scores.induction[0, 3] == pytest.approx(1.0, abs=1e-6)
    assert np.delete(scores.induction.ravel(), 3).max() < 0.5
    assert scores.duplicate_token[0, 3] < 0.5


def _direct(lm, seq_len, n_repeats, batch, seed):
    ids, off = repeated_random_tokens(lm, seq_len, n_repeats, batch, seed)
    with torch.no_grad(), attention_implementation(lm.model, "eager"):
        att = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True).attentions
    L, H = len(att), att[0].shape[1]
    out = np.zeros((3, L, H))
    for layer in range(L):
        a = att[layer].numpy()
        for h in range(H):
            prev = [a[b, h, i, i - 1] for b in range(batch) for i in range(off + 1, off + seq_len * n_repeats)]
            rep = range(off + seq_len, off + seq_len * n_repeats)
            dup = [a[b, h, i, i - seq_len] for b in range(batch) for i in rep]
            ind = [a[b, h, i, i - seq_len + 1] for b in range(batch) for i in rep]
            out[:, layer, h] = np.mean(prev), np.mean(dup), np.mean(ind)
    return out


def test_scores_equal_direct_computation(tiny):
    lm = tiny("gpt_neox", n_layers=2)
    scores = compute_head_scores(lm, seq_len=7, n_repeats=3, batch=2, seed=3)
    want = _direct(lm, 7, 3, 2, 3)
    got = np.stack([scores.previous_token, scores.duplicate_token, scores.induction])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_repeated_tokens_layout(tiny):
    lm = tiny("llama")
    ids, off = repeated_random_tokens(lm, 5, 3, 2, 0)
    assert off == 1 and ids.shape == (2, 16)
    assert torch.equal(ids[:, 1:6], ids[:, 6:11]) and torch.equal(ids[:, 1:6], ids[:, 11:16])
    assert not set(ids[:, 1:].ravel().tolist()) & set(lm.tokenizer.all_special_ids)


def test_to_dict_and_bad_input(tiny):
    lm = tiny("llama")
    scores = compute_head_scores(lm, seq_len=4, batch=1)
    d = scores.to_dict()
    assert isinstance(scores, HeadScores)
    assert np.array(d["induction"]).shape == (2, 4) and d["seq_len"] == 4
    assert "<table>" in scores._repr_html_()
    with pytest.raises(InputError):
        compute_head_scores(lm, seq_len=1)
    with pytest.raises(InputError, match="exceeds the context"):
        compute_head_scores(lm, seq_len=300, n_repeats=2)


def test_smollm2_has_induction_heads(smollm2):
    scores = compute_head_scores(smollm2, seq_len=12, n_repeats=2, batch=1)
    assert scores.induction.shape == (30, 9)
    assert scores.induction.max() > 0.5  # a trained model has induction heads; random init does not
    assert scores.previous_token.max() > 0.5


def _tiny_bert():
    import transformers as tf

    from openmav.analysis.extractor import AttentionExtractor
    from openmav.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    model = tf.BertModel(config).eval()
    return model, AttentionExtractor(model=model, tokenizer=tok, model_name="tiny-bert")


def test_encoder_is_refused_in_one_sentence():
    model, ex = _tiny_bert()
    assert ex.is_encoder and ex.handle.lm is None
    for target in (ex, ex.handle, model):
        with pytest.raises(TypeError, match="head scores do not apply to") as info:
            compute_head_scores(target, seq_len=4, batch=1)
        assert isinstance(info.value, InputError) and len(str(info.value).splitlines()) == 1
    with pytest.raises(TypeError, match="got None; an encoder's extractor has handle.lm None"):
        compute_head_scores(ex.handle.lm, seq_len=4, batch=1)
    with pytest.raises(TypeError, match="need a LoadedModel or an AttentionExtractor, got str"):
        compute_head_scores("smollm2-135m")


def test_extractor_accepted_and_short_repr(tiny):
    from openmav.analysis.extractor import AttentionExtractor

    lm = tiny("llama", n_layers=3)
    direct = compute_head_scores(lm, seq_len=5, batch=1)
    via = compute_head_scores(AttentionExtractor(model=lm), seq_len=5, batch=1)
    np.testing.assert_array_equal(direct.induction, via.induction)
    text = repr(via)
    assert len(text.splitlines()) == 3 and "3 layers x 4 heads" in text and "[[" not in text
    with pytest.raises(ValueError, match="unknown head score 'copy'"):
        via.get("copy")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        via.top("induction", 0)
