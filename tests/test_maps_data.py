"""`mav maps` numbers against independent recomputations, and images read back from PNG."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from openmav.capture import SamplingConfig
from openmav.errors import InputError
from openmav.maps.run import MapsOptions, run_maps

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    lm = tiny("llama", n_layers=3)
    out = str(tmp_path_factory.mktemp("maps") / "out")
    # 11 tokens cross a lens batch (maps batch the lens of generated tokens over 8 steps)
    opts = MapsOptions(model=None, prompt=PROMPT, output_dir=out, max_new_tokens=11, window=8, stride=3, workers=0)
    result = run_maps(opts, lm=lm)
    with open(result.sidecar, encoding="utf-8") as fh:
        side = json.load(fh)
    return lm, result, side


def _full_forward(lm, ids):
    """One uncached eager forward with our own hooks on each block (independent of openmav's)."""
    model = lm.model
    resid = []
    hooks = [layer.register_forward_hook(lambda m, a, o: resid.append((o[0] if isinstance(o, tuple) else o)[0]))
             for layer in model.model.layers]
    current = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
    finally:
        model.set_attn_implementation(current)
        for h in hooks:
            h.remove()
    return out, resid


def test_attention_matches_output_attentions(run):
    lm, result, side = run
    ids = [t["id"] for t in side["tokens"]]
    assert len(side["steps"]) >= 3, "the tiny model should generate a few tokens"
    out, _ = _full_forward(lm, ids)
    for step in side["steps"]:
        q = step["query_position"]
        want = torch.stack([a[0, :, q, : q + 1] for a in out.attentions]).max(dim=1).values  # [L, S]
        np.testing.assert_allclose(np.array(step["attention"]), want.numpy(), atol=2e-5)


@pytest.mark.parametrize("reduce,head", [("mean", None), ("head", 1)])
def test_other_reductions(tiny, tmp_path, reduce, head):
    lm = tiny("llama", n_layers=3)
    opts = MapsOptions(model=None, prompt=PROMPT, output_dir=str(tmp_path), max_new_tokens=3, window=8, stride=3,
                       workers=0, reduce=reduce, head=head)
    result = run_maps(opts, lm=lm)
    side = json.load(open(result.sidecar, encoding="utf-8"))
    out, _ = _full_forward(lm, [t["id"] for t in side["tokens"]])
    for step in side["steps"]:
        q = step["query_position"]
        rows = torch.stack([a[0, :, q, : q + 1] for a in out.attentions])
        want = rows.mean(dim=1) if reduce == "mean" else rows[:, head]
        np.testing.assert_allclose(np.array(step["attention"]), want.numpy(), atol=2e-5)


def test_lens_labels_match_hand_lens(run):
    lm, result, side = run
    ids = [t["id"] for t in side["tokens"]]
    out, resid = _full_forward(lm, ids)
    n = len(side["lens"]["ids"])
    assert n == len(ids) - 1  # every position read by the model; the last token never is
    model = lm.model
    with torch.no_grad():
        for layer, h in enumerate(resid):
            probs = torch.softmax(model.lm_head(model.model.norm(h[:n])), -1)  # final norm + unembedding, by hand
            top = torch.topk(probs, 5, dim=-1)
            got_ids = np.array(side["lens"]["ids"])[:, layer]
            got_p = np.array(side["lens"]["probs"])[:, layer]
            np.testing.assert_allclose(got_p, top.values.numpy(), atol=2e-5)
            assert (got_ids[:, 0] == top.indices[:, 0].numpy()).all()
        final = torch.topk(torch.softmax(out.logits[0, :n], -1), 5, dim=-1)
        assert side["final"]["ids"] == final.indices.tolist()
    # the generated tokens are the greedy choices of the full forward
    p = side["prompt_length"]
    assert ids[p:] == out.logits[0, p - 1:-1].argmax(-1).tolist()


def test_png_size_rows_and_colours(run):
    from PIL import Image

    from openmav.maps.compose import FINAL_ROW_GREY, LEVELS
    from openmav.maps.render import Layout, colormap_lut

    lm, result, side = run
    lay, lut = Layout(n_rows=side["n_layers"] + 1), colormap_lut("viridis")
    # the colour of value v: the colour map at v rounded to one of LEVELS steps
    colour = lambda v: lut[int(np.rint(np.rint(v * (LEVELS - 1)) * 255 / (LEVELS - 1)))]  # noqa: E731
    files = sorted(os.listdir(result.output_dir))
    expected = [im["file"] for s in side["steps"] for im in s["images"]]
    assert sorted(expected) == sorted(f for f in files if f.endswith(".png")) == sorted(result.images)
    assert not [f for f in files if f.endswith(".part")]
    for step in side["steps"]:
        att = np.array(step["attention"])
        for im in step["images"]:
            a, b = im["start"], im["end"]
            assert b - a == min(side["window"], step["query_position"] + 1)
            img = np.asarray(Image.open(os.path.join(result.output_dir, im["file"])).convert("RGB"))
            assert img.shape == (lay.height, lay.width(b - a), 3)
            for r in range(lay.n_rows):  # a cell's corner pixel holds its colour (text sits in the middle)
                y = lay.top + r * lay.cell_h + 1
                for c, k in enumerate(range(a, b)):
                    x = lay.left + c * lay.cell_w + 4 if k != step["query_position"] else None
                    if x is None:
                        continue
                    want = colour(att[r, k]) if r < lay.n_rows - 1 else [FINAL_ROW_GREY] * 3
                    assert np.abs(img[y, x].astype(int) - want).max() <= 1, (im["file"], r, k)
            below = img[lay.top + lay.grid_h + 1, lay.left + 4]
            assert (below == 255).all()  # no further row under the output row


def test_bad_head_and_window_write_nothing(tiny, tmp_path):
    lm = tiny("llama", n_layers=3)
    out = tmp_path / "never"
    with pytest.raises(InputError, match="out of range"):
        run_maps(MapsOptions(None, PROMPT, str(out), reduce="head", head=4, workers=0), lm=lm)
    with pytest.raises(InputError, match="larger than the model's context"):
        run_maps(MapsOptions(None, PROMPT, str(out), window=513, stride=5, workers=0), lm=lm)
    assert not out.exists()


def test_interrupt_reports_written_files(tiny, tmp_path, monkeypatch):
    from openmav.maps import write

    lm = tiny("llama", n_layers=2)
    calls = []

    def stop_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    real = write._write_plan
    monkeypatch.setattr(write, "_write_plan", stop_after_first)
    opts = MapsOptions(None, PROMPT, str(tmp_path), max_new_tokens=4, window=8, stride=3, workers=0)
    with pytest.raises(write.ImagesInterrupted) as info:
        run_maps(opts, lm=lm)
    assert info.value.written and sorted(info.value.written) == sorted(
        f for f in os.listdir(tmp_path) if f.endswith(".png"))
    assert (tmp_path / "maps.json").exists()


def test_process_pool_writes_the_same_images(run, tmp_path):
    from openmav.maps import write
    from openmav.maps.collect import collect

    lm, result, side = run
    ids = torch.tensor([[t["id"] for t in side["tokens"][: side["prompt_length"]]]])
    data = collect(lm, ids, PROMPT, len(side["steps"]), SamplingConfig())
    plans = write.plan_images(data, "max", None, 8, 3)
    names = write.write_images(data, plans, str(tmp_path), workers=2)
    assert sorted(names) == sorted(result.images)
    for name in names:
        assert (tmp_path / name).read_bytes() == open(os.path.join(result.output_dir, name), "rb").read()


def test_drawable_replaces_control_and_missing_glyphs():
    from openmav.maps.render import drawable, shorten

    assert drawable("a\x0cb") == "a\\x0cb"  # a control character is shown as its escaped code point
    assert drawable("␣the↵") == "␣the↵"
    assert shorten("abcdefghij", 7) == "abcdef…" and shorten("abc", 7) == "abc"
