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


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_round_trip_engine_records(tiny, tmp_path, family):
    lm = tiny(family)
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


def test_damaged_traces_name_the_file(tmp_path):
    """Every way a file can be broken is one InputError naming it (the CLI table has many more)."""
    good = save_trace(tmp_path / "good.npz", [make_record(0), make_record(1)])
    data = good.read_bytes()
    cases = {"empty.npz": b"", "cut.npz": data[: len(data) // 3], "short.npz": data[:-20]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError) as info:
            load_trace(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="is a directory"):
        load_trace(tmp_path)
    with pytest.raises(InputError, match="no trace file"):
        load_trace(tmp_path / "missing.npz")


def test_save_is_write_then_rename(tmp_path, monkeypatch):
    """The archive is written under a temporary name in the same folder, then renamed onto the target."""
    import os

    from openmav.capture import trace

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), os.path.basename(src), str(dst)))
        assert os.path.getsize(src) > 0 and not os.path.exists(dst)
        real_replace(src, dst)

    monkeypatch.setattr(trace.os, "replace", spy)
    path = save_trace(tmp_path / "t.npz", [make_record()])
    (folder, name, dst), = seen
    assert folder == str(tmp_path) and name.startswith(".t.npz.") and name.endswith(".partial.npz")
    assert dst == str(path) and sorted(os.listdir(tmp_path)) == ["t.npz"]
