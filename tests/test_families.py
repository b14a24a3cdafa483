"""Every declared family, inferred adapters, hybrids and attention-free models, through the invariant suite.

Each family is a tiny random-weight model of its real transformers class.  The
invariants (``openmav.support.check_invariants``) are the engine's: cached steps
against one uncached forward, attention rows against ``output_attentions``, hooks
bitwise neutral, the last layer's lens equal to the model's distribution, a head
ablation against a hand recomputation, batched evaluate-all-heads against one head
at a time; the residual decomposition and head slices are checked at load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.backends.adapters import declared_adapter
from openmav.backends.infer import infer_adapter
from openmav.backends.loading import find_parts, wrap_model
from openmav.backends.parts import ModelParts
from openmav.capture import CaptureConfig, generate_steps
from openmav.errors import UnsupportedModelError
from openmav.support import check_invariants
from openmav.testing import tiny_causal_lm, tiny_config, tiny_model, tiny_tokenizer

# the families the issue names, one model type each (Gemma 3's multimodal class included)
DECLARED = ["gpt2", "gpt_bigcode", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "falcon", "mpt", "codegen", "phi",
            "phi3", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
            "gemma3_text", "olmo", "olmo2", "olmoe", "stablelm", "starcoder2", "granite", "cohere", "smollm3",
            "gpt_oss", "deepseek_v2", "deepseek_v3", "bert", "bart"]
HYBRID = ["jamba", "qwen3_next", "lfm2", "gemma3", "falcon_h1"]


@pytest.fixture(scope="module")
def family_model():
    cache = {}

    def make(model_type):
        if model_type not in cache:
            cache[model_type] = tiny_model(model_type)
        return cache[model_type]

    return make


@pytest.mark.parametrize("model_type", DECLARED)
def test_declared_family_passes_every_invariant(family_model, model_type):
    lm = family_model(model_type)
    if model_type != "bart":  # BART-style decoders share one inferred post-LN row
        assert not lm.parts.inferred, lm.parts.describe()
    check_invariants(lm)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neo", "gptj", "opt", "bloom", "falcon", "phi", "mixtral",
                                        "gemma2", "olmo2", "granite", "cohere", "gpt_oss", "deepseek_v3", "bert"])
def test_inferred_parts_equal_declared_parts(family_model, model_type):
    lm = family_model(model_type)
    inferred = ModelParts.resolve(lm.model, infer_adapter(lm.model), inferred=True)
    declared = lm.parts
    for name in ("blocks", "o_proj"):
        assert getattr(inferred, name) == getattr(declared, name), name
    assert (inferred.n_heads, inferred.head_dim) == (declared.n_heads, declared.head_dim)
    assert inferred.residual_scale == declared.residual_scale
    assert inferred.logit_scale == pytest.approx(declared.logit_scale)
    # the sub-block outputs: the same modules, or modules that compute the same tensors
    from openmav.backends.probe import probe_forward

    mods = [*inferred.attn_out, *declared.attn_out, *(m for m in inferred.mlp_out + declared.mlp_out if m),
            *inferred.attn, *declared.attn]
    run = probe_forward(lm.model, mods, output_attentions=False)
    for a, b in zip(inferred.attn, declared.attn):  # the same module, or one that wraps it (BERT)
        torch.testing.assert_close(run.weights[a], run.weights[b])
    for a, b in zip(inferred.attn_out + inferred.mlp_out, declared.attn_out + declared.mlp_out):
        if a is not b:
            torch.testing.assert_close(run.outputs[a], run.outputs[b])


@pytest.mark.parametrize("model_type", HYBRID)
def test_hybrid_layers_are_told_apart(family_model, model_type):
    lm = family_model(model_type)
    parts = lm.parts
    check_invariants(lm)
    recs = list(generate_steps(lm, "The cat sat on the mat", 2, stop_at_eos=False))
    for layer in range(parts.n_layers):
        if layer in parts.attention_layers:
            np.testing.assert_allclose(recs[0].attention[layer].sum(-1), 1.0, atol=1e-5)
        else:
            assert np.isnan(recs[0].attention_entropy[layer]).all()
            assert not recs[0].attention[layer].any()
    if len(parts.attention_layers) < parts.n_layers:
        assert "attention in layers" in parts.describe()
        with pytest.raises(UnsupportedModelError, match="has no attention"):
            parts.check_head(next(i for i in range(parts.n_layers) if i not in parts.attention_layers), 0)


def test_attention_free_model_keeps_the_other_views(family_model):
    lm = family_model("mamba")
    assert not lm.parts.has_attention and lm.parts.inferred
    assert "no attention layers" in lm.parts.describe()
    check_invariants(lm)  # steps vs full forward, lens, hooks
    recs = list(generate_steps(lm, "The cat sat", 3, stop_at_eos=False))
    assert recs[0].attention is None and recs[0].lens_ids.shape[0] == lm.parts.n_layers
    assert np.isfinite(recs[0].residual_norms).all()
    from openmav.interventions.evaluate import evaluate_all_heads

    with pytest.raises(Exception, match="no attention layers"):
        evaluate_all_heads(lm, lm.tokenizer("The cat", return_tensors="pt").input_ids)


# --- a model class no adapter names: odd module names, its own attention ----------------------------------------

def _toy_classes():
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    class ToyConfig(PretrainedConfig):
        model_type = "openmav_toy"

        def __init__(self, vocab_size=400, width=32, heads=4, depth=3, **kw):
            self.vocab_size, self.width, self.heads, self.depth = vocab_size, width, heads, depth
            super().__init__(**kw)

    class Mixer(torch.nn.Module):  # attention under a name nobody uses
        def __init__(self, c):
            super().__init__()
            self.h, self.d = c.heads, c.width // c.heads
            self.qkv = torch.nn.Linear(c.width, 3 * c.width)
            self.back = torch.nn.Linear(c.width, c.width)

        def forward(self, x, **kwargs):
            b, p, _ = x.shape
            q, k, v = self.qkv(x).view(b, p, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / self.d ** 0.5
            scores = scores.masked_fill(torch.triu(torch.ones(p, p, dtype=torch.bool), 1), float("-inf"))
            w = scores.softmax(-1)
            z = (w @ v).transpose(1, 2).reshape(b, p, -1)
            return self.back(z), w

    class Cell(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pre_a, self.pre_m = torch.nn.LayerNorm(c.width), torch.nn.LayerNorm(c.width)
            self.mix = Mixer(c)
            self.ffwd = torch.nn.Sequential(torch.nn.Linear(c.width, 2 * c.width), torch.nn.GELU(),
                                            torch.nn.Linear(2 * c.width, c.width))

        def forward(self, x, **kwargs):
            x = x + self.mix(self.pre_a(x))[0]
            return x + self.ffwd(self.pre_m(x))

    class ToyLM(PreTrainedModel):
        config_class = ToyConfig

        def __init__(self, c):
            super().__init__(c)
            self.emb = torch.nn.Embedding(c.vocab_size, c.width)
            self.trunk = torch.nn.ModuleList(Cell(c) for _ in range(c.depth))
            self.last = torch.nn.LayerNorm(c.width)
            self.readout = torch.nn.Linear(c.width, c.vocab_size, bias=False)
            self.post_init()

        def get_output_embeddings(self):
            return self.readout

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids=None, output_attentions=False, **kwargs):
            x = self.emb(input_ids)
            seen = []
            hook = [c.mix.register_forward_hook(lambda m, a, o: seen.append(o[1])) for c in self.trunk]
            try:
                for cell in self.trunk:
                    x = cell(x)
            finally:
                for h in hook:
                    h.remove()
            return CausalLMOutput(logits=self.readout(self.last(x)),
                                  attentions=tuple(seen) if output_attentions else None)

    return ToyConfig, ToyLM


def test_a_model_class_no_adapter_names_is_inferred_and_verified():
    ToyConfig, ToyLM = _toy_classes()
    torch.manual_seed(0)
    model = ToyLM(ToyConfig(depth=3)).eval()
    lm = wrap_model(model, tiny_tokenizer(), name="toy")
    parts = lm.parts
    assert parts.inferred and parts.adapter.blocks == "trunk"
    assert parts.adapter.attn == "mix" and parts.adapter.o_proj == "mix.back"
    assert (parts.n_heads, parts.head_dim) == (4, 8)
    assert parts.final_norm is model.last and parts.unembed is model.readout
    check_invariants(lm)  # no cache: the step loop runs the whole sequence, and says the same numbers


def test_a_wrong_declared_row_falls_back_to_inference_and_a_broken_model_is_refused():
    lm = tiny_model("llama")
    model = lm.model
    # a declared row that names the wrong output projection fails its checks
    from dataclasses import replace

    wrong = replace(declared_adapter("llama"), o_proj="self_attn.q_proj")
    from openmav.backends.verify import verify_parts

    with pytest.raises(UnsupportedModelError, match="output projection"):
        verify_parts(model, ModelParts.resolve(model, wrong))
    # a model without a language-model head: one line, what to use instead
    from transformers import AutoModel

    base = AutoModel.from_config(tiny_config("llama", 400))
    with pytest.raises(UnsupportedModelError, match="causal LM"):
        wrap_model(base, tiny_tokenizer())


def test_verification_is_cheap_and_leaves_the_model_as_it_was():
    lm = tiny_model("gemma3")
    before = lm.model.config._attn_implementation
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    find_parts(lm.model)
    assert lm.model.config._attn_implementation == before
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules()) == n_hooks


def test_bert_style_decoder_needs_is_decoder():
    config = tiny_config("bert", 400)
    config.is_decoder = False
    model = tiny_causal_lm(config)
    with pytest.raises(UnsupportedModelError, match="is_decoder"):
        wrap_model(model, tiny_tokenizer())


def test_moe_lens_and_capture_config_off(family_model):
    lm = family_model("mixtral")
    assert lm.parts.is_moe
    recs = list(generate_steps(lm, "The cat", 2, capture=CaptureConfig(attention=False, logit_lens=False)))
    assert recs[0].attention is None and np.isfinite(recs[0].mlp_norms).all()


@pytest.mark.parametrize("command", [[], ["maps", "--prompt", "Hi", "--output-dir", "out"]])
def test_an_encoder_given_to_a_causal_view_is_one_line(command, capsys, tmp_path, monkeypatch):
    from openmav.analysis.models import bundled_encoder_dir
    from openmav.cli import main

    monkeypatch.chdir(tmp_path)
    code = main([*command, "--model", str(bundled_encoder_dir()), "--max-new-tokens", "2"]
                + (["--format", "jsonl"] if not command else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is an encoder" in err[0] and "causal LM" in err[0]


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("command", [[], ["maps", "--prompt", "Hi", "--output-dir", "out"], ["serve", "--port"]])
def test_the_bundled_encoder_by_name_is_refused_as_an_encoder_not_asked_of_the_hub(command, capsys, tmp_path,
                                                                                  monkeypatch):
    from openmav.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [*command, _free_port()] if command[:1] == ["serve"] else [*command, "--max-new-tokens", "2"]
    code = main([*args, "--model", "all-minilm-l6-v2"] + (["--format", "jsonl"] if not command else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "all-minilm-l6-v2 is an encoder" in err[0] and "causal LM" in err[0] and "hub" not in err[0]


# a representative slice of the sweep in CI (the full sweep: python -m openmav.support)
INFERRED_SLICE = ["afmoe", "bamba", "bart", "ctrl", "dbrx", "emu3", "falcon_h1", "fuyu", "granitemoehybrid", "lfm3",
                  "llama4_text", "mllama", "nemotron_h", "olmo_hybrid", "qwen3_next", "recurrent_gemma", "rwkv",
                  "xlstm", "zamba2", "mamba2", "minicpm3", "openai-gpt", "beam", "ergo", "zaya", "minimax"]


@pytest.mark.parametrize("model_type", INFERRED_SLICE)
def test_sweep_slice_passes_with_an_inferred_adapter(model_type):
    from transformers import CONFIG_MAPPING

    from openmav.support import check_model_type

    if model_type not in CONFIG_MAPPING:  # ergo arrived in transformers 5.25; the range allows older 5.x
        import transformers

        pytest.skip(f"transformers {transformers.__version__} has no {model_type}")

    result = check_model_type(model_type)
    assert result.status == "pass" and result.how == "inferred", result.reason


def test_stored_support_table_meets_the_target_and_matches_the_code():
    from openmav.support import load, summary

    from openmav.support import BUILDS

    payload = load()
    s = summary(payload)
    assert s["passed"] >= 0.9 * s["runnable"], s
    names = [name for name, _, _ in BUILDS]
    for r in payload["results"]:  # every type built twice (2 layers; 4 with its checkpoints' settings)
        assert list(r["builds"]) == names, r["model_type"]
        if r["status"] != "unrunnable":
            assert (r["status"] == "pass") == all(b["status"] == "pass" for b in r["builds"].values()), r
    assert set(s["builds"]) == set(names) and all(b["passed"] >= s["passed"] for b in s["builds"].values())
    stored = {r["model_type"]: r["status"] for r in payload["results"]}
    for t in INFERRED_SLICE + DECLARED:
        assert stored.get(t) == "pass", t


def test_gemma3_multimodal_is_declared():
    from openmav.tiny_configs import tiny_config_for_type

    model = tiny_causal_lm(tiny_config_for_type("gemma3", 400))  # Gemma3ForConditionalGeneration
    lm = wrap_model(model, tiny_tokenizer(), name="tiny-gemma3-multimodal")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert lm.parts.adapter.name == "gemma3_multimodal" and not lm.parts.inferred
    check_invariants(lm)
