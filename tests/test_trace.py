"""Trace files round-trip every field of every StepRecord."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from view_fixtures import make_record

from openmav.capture import CaptureConfig, generate_steps
from openmav.capture.trace import load_trace, save_trace
from openmav.errors import InputError


def assert_same(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_round_trip_engine_records(tiny, tmp_path):
    lm = tiny("gpt2")
    recs = list(generate_steps(lm, "The cat sat", 4, capture=CaptureConfig()))
    recs[1].extra["note"] = "kept"
    path = save_trace(tmp_path / "t.npz", recs, {"model": "tiny-gpt2", "prompt": "The cat sat"})
    meta, back = load_trace(path)
    assert meta == {"model": "tiny-gpt2", "prompt": "The cat sat"}
    assert len(back) == 4 and back[0].prompt_attention is not None
    for a, b in zip(recs, back):
        assert_same(a, b)


def test_round_trip_partial_captures(tmp_path):
    rec = make_record()
    rec.lens_ids = rec.lens_probs = rec.lens_tokens = None
    _, (back,) = load_trace(save_trace(tmp_path / "p.npz", [rec]))
    assert_same(rec, back)


def test_not_a_trace(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"hello")
    with pytest.raises(InputError, match="not an openmav trace"):
        load_trace(bad)
