"""The sweep's two builds and its classes of refusal, on a stored-table shape and on real types."""

from __future__ import annotations

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
