"""The sweep's two builds and its classes of refusal, on a stored-table shape and on real types."""

from __future__ import annotations

import pytest

from openmav.support import BUILDS, check_model_type, markdown_table, refusal_class, summary


def test_refusals_are_classed_by_what_the_first_check_says():
    cases = {
        "HYV4DecoderLayer carries 4 residual streams (hyper-connections, mixed by learned weights": "several residual "
                                                                                                  "streams",
        "layer 0: the FalconH1Mixer beside the attention (it joins at 0.7, the row says 1) is not read at the place "
        "or scale where it joins the residual stream": "a share misread at its own size",
        "the model rescales the residual stream by 0.5 between block 1 and block 2": "the stream edited between "
                                                                                     "blocks",
        "no pair of sub-block outputs of XmodLayer adds up to the block's change": "a block that is not a sum of "
                                                                                  "sub-blocks",
        "InvariantError: step 2 attention rows vs output_attentions: max difference 2e-05": "an invariant of the "
                                                                                           "engine fails",
        "block 0 of model.layers (DoryDecoderLayer) runs 2 times in one forward: a looped stack": "blocks run more "
                                                                                                "than once per "
                                                                                                "forward",
        "each block of model.layers holds 2 attention sub-layers": "several attention sub-layers per block",
        "XLMModel keeps each layer's parts in parallel lists (...) with no module per layer": "no module per layer",
        "the model adds 32 positions of its own before the first block": "positions the model adds",
        "the blocks keep positions first ([8, 1, 64] where the head reads [1, 8, 64])": "not a left-to-right stack",
        "something nobody wrote down": "other",
    }
    for reason, cls in cases.items():
        assert refusal_class(reason) == cls, reason


def test_summary_counts_each_build_and_its_refusals():
    first, second = (name for name, _, _ in BUILDS)
    rows = [
        {"model_type": "a", "status": "pass", "how": "declared", "adapter": "x", "shape": "pre_norm", "layers": "",
         "reason": "", "builds": {first: {"status": "pass", "reason": ""}, second: {"status": "pass", "reason": ""}}},
        {"model_type": "b", "status": "fail", "how": "inferred", "adapter": "y", "shape": "pre_norm", "layers": "",
         "reason": f"{second}: the model rescales the residual stream by 0.5 between block 1 and block 2",
         "builds": {first: {"status": "pass", "reason": ""},
                    second: {"status": "fail", "reason": "the model rescales the residual stream by 0.5 between "
                                                          "block 1 and block 2"}}},
        {"model_type": "c", "status": "unrunnable", "how": "", "adapter": "", "shape": "", "layers": "",
         "reason": "transformers cannot run the tiny config: X", "builds": {}},
    ]
    payload = {"transformers": "t", "torch": "t", "results": rows}
    s = summary(payload)
    assert (s["types"], s["runnable"], s["passed"]) == (3, 2, 1)
    assert s["builds"][first] == {"passed": 2, "refused": {}}
    assert s["builds"][second] == {"passed": 1, "refused": {"the stream edited between blocks": 1}}
    table = markdown_table(payload)
    assert "**1 of 2 runnable types pass**" in table and "1 the stream edited between blocks" in table
    assert "| b | pass | fail | y (inferred) |" in table


def test_a_type_passes_only_if_both_builds_pass():
    result = check_model_type("rwkv")  # halves its stream every 2nd block in the 4-layer build
    assert result.status == "pass", result.reason
    assert [b["status"] for b in result.builds.values()] == ["pass", "pass"]
    assert list(result.builds) == [name for name, _, _ in BUILDS]


# what each refused type does that the engine cannot represent, in its one line (and the class it is counted in)
REFUSED = {
    "gemma3n_text": ("carries 4 residual streams [4, 1, 8, 64] (AltUp", "several residual streams"),
    "deepseek_v4": ("carries 4 residual streams [1, 8, 4, 64] (hyper-connections", "several residual streams"),
    "reformer": ("2 residual streams side by side (2 x 64)", "several residual streams"),
    "prophetnet": ("3 residual streams side by side along the positions (24 positions for 8 tokens: the main stream "
                   "and 2 n-gram predicting streams)", "several residual streams"),
    "inkling2_text": ("reads, beside the residual, the states kept at earlier blocks (block_states",
                      "several residual streams"),
    "dory": ("block 0 of model.layers (DoryDecoderLayer) runs 2 times in one forward",
             "blocks run more than once per forward"),
    "hrm_text": ("each block of model.L_module.layers 6 times", "blocks run more than once per forward"),
    "longcat_flash": ("holds 2 attention sub-layers (self_attn.0, self_attn.1)", "several attention sub-layers per "
                                                                                 "block"),
    "xlm": ("parallel lists (transformer.attentions, transformer.layer_norm1, transformer.ffns, "
            "transformer.layer_norm2) with no module per layer", "no module per layer"),
    "cpmant": ("adds 32 positions of its own before the first block", "positions the model adds"),
    "xlnet": ("keep positions first ([8, 1, 64] where the head reads [1, 8, 64]) and, with attn_type 'bi'",
              "not a left-to-right stack"),
    "jetmoe": ("routes each token's query and output projections to experts", "attention without one output "
                                                                              "projection"),
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_a_refusal_says_what_the_model_does(model_type):
    from transformers import CONFIG_MAPPING

    from openmav.support import check_build

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {model_type}")
    result = check_build(model_type)
    words, cls = REFUSED[model_type]
    assert result.status == "fail" and words in result.reason, result.reason
    assert refusal_class(result.reason) == cls and "dtype" not in result.reason
