"""X-MOD's language adapter joins the normed sum, which the same LayerNorm norms again: its row reads it there.

The residual the engine reports after each block is checked against the model's own hidden states, and rows
that put the adapter inside one norm, or leave it out, are refused at load by the verification.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from openmav.backends.adapters import declared_adapter
from openmav.backends.loading import wrap_model
from openmav.backends.parts import ModelParts
from openmav.backends.verify import verify_parts
from openmav.capture.hooks import CaptureHooks
from openmav.errors import UnsupportedModelError
from openmav.support import check_invariants
from openmav.testing import tiny_causal_lm, tiny_tokenizer
from openmav.tiny_configs import tiny_config_for_type


@pytest.fixture(scope="module")
def xmod():
    config = tiny_config_for_type("xmod", len(tiny_tokenizer()), 2)
    config.is_decoder = True
    return tiny_causal_lm(config)


def test_xmod_is_read_with_its_declared_row_and_passes_every_invariant(xmod):
    tok = tiny_tokenizer()
    lm = wrap_model(xmod, tok, name="tiny-xmod")
    assert lm.parts.adapter.name == "xmod" and not lm.parts.inferred
    assert [type(m[0]).__name__ for m in lm.parts.mlp_extra] == ["XmodAdapter"] * 2
    ids = tok("When Mary and John went to the store", return_tensors="pt").input_ids
    hooks = CaptureHooks(lm.parts, attention=False, last_only=False)
    with hooks, torch.no_grad():
        out = xmod(input_ids=ids, output_hidden_states=True)
        resid = hooks.stacked("resid")
    torch.testing.assert_close(resid, torch.stack(out.hidden_states[1:]), rtol=0, atol=1e-6)
    check_invariants(lm)


def test_rows_that_misplace_or_miss_the_adapter_are_refused(xmod):
    row = declared_adapter("xmod", xmod.base_model_prefix)
    inside = replace(row, shape="post_ln")  # the adapter added inside one norm
    missing = replace(row, mlp_extra=())
    for wrong in (inside, missing):
        with pytest.raises(UnsupportedModelError, match="do not add up|not read at the place"):
            verify_parts(xmod, ModelParts.resolve(xmod, wrong))
