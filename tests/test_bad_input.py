"""Every bad input to every command: refused with one line, a non-zero exit, never a traceback.

One table (:data:`CASES`) covers ``mav``, ``mav maps``, ``mav compare``, ``mav serve``
(flags that fail before binding) and ``mav replay`` (bad files).  The cases run through
``openmav.cli.main(argv)`` in-process, inside one fresh interpreter started for the
table, so the test can see what each case imported: a ``flag`` case must be refused
before torch is imported (so certainly before any model loads).  ``file`` cases
(a trace's content, the maps folder check) may import torch; a tripwire on the model
loaders proves that none of them loads a model.  Two more tests run ``python -m
openmav`` itself: a flag error takes well under a second and never imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

SUR = "a\udcffb"  # what argv decoding gives for the bytes b"a\xffb"
LONE = "x\ud800y"  # a lone surrogate from Python code

# (argv, words the one stderr line must hold, kind); {tmp} is the folder of prepared files.
FLAG, FILE = "flag", "file"
CASES: list[tuple[list[str], str, str]] = [
    # ---- mav (the live view): sampling ----
    (["--temp", "inf"], "--temp must be a finite number", FLAG),
    (["--temp", "nan"], "--temp must be a finite number", FLAG),
    (["--temp=-inf"], "--temp must be", FLAG),
    (["--temp", "-inf"], "argument --temp: expected one argument", FLAG),  # argparse reads -inf as a flag
    (["--temp", "-1"], "--temp must be", FLAG),
    (["--temp", "1e999"], "got inf", FLAG),
    (["--temp", "abc"], "invalid float value", FLAG),
    (["--temp", ""], "invalid float value", FLAG),
    (["--top-p", "0"], "--top-p must be a number in (0, 1]", FLAG),
    (["--top-p", "-0.5"], "--top-p", FLAG),
    (["--top-p", "1.5"], "--top-p", FLAG),
    (["--top-p", "nan"], "--top-p", FLAG),
    (["--top-p", "inf"], "--top-p", FLAG),
    (["--top-k", "-1"], "--top-k must be at least 0", FLAG),
    (["--top-k", "2147483648"], "--top-k", FLAG),
    (["--top-k", "99999999999999999999999"], "--top-k", FLAG),
    (["--top-k", "1.5"], "invalid int value", FLAG),
    (["--top-k", "ten"], "invalid int value", FLAG),
    (["--min-p", "-0.1"], "--min-p must be a number in [0, 1]", FLAG),
    (["--min-p", "1.01"], "--min-p", FLAG),
    (["--min-p", "nan"], "--min-p", FLAG),
    (["--min-p", "inf"], "--min-p", FLAG),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0", FLAG),
    (["--repetition-penalty", "-1"], "--repetition-penalty", FLAG),
    (["--repetition-penalty", "inf"], "--repetition-penalty", FLAG),
    (["--repetition-penalty", "nan"], "--repetition-penalty", FLAG),
    (["--seed", "99999999999999999999999"], "what torch.manual_seed accepts", FLAG),
    (["--seed", "18446744073709551616"], "--seed", FLAG),
    (["--seed", "-1"], "--seed must be at least 0", FLAG),
    (["--seed", "1.5"], "invalid int value", FLAG),
    (["--seed", "nan"], "invalid int value", FLAG),
    # ---- mav: lengths and drawing ----
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1", FLAG),
    (["--max-new-tokens", "-5"], "--max-new-tokens", FLAG),
    (["--max-new-tokens", "1000001"], "at most 1000000", FLAG),
    (["--max-new-tokens", "99999999999999999999"], "--max-new-tokens", FLAG),
    (["--max-new-tokens", "inf"], "invalid int value", FLAG),
    (["--refresh-rate", "inf"], "--refresh-rate must be a finite number >= 0", FLAG),
    (["--refresh-rate", "-1"], "--refresh-rate", FLAG),
    (["--refresh-rate", "nan"], "--refresh-rate", FLAG),
    (["--refresh-rate=-inf"], "--refresh-rate", FLAG),
    (["--limit-chars", "0"], "--limit-chars must be at least 1", FLAG),
    (["--limit-chars", "-3"], "--limit-chars", FLAG),
    (["--max-bar-length", "0"], "--max-bar-length", FLAG),
    (["--max-bar-length", "10001"], "--max-bar-length", FLAG),
    (["--num-grid-rows", "0"], "--num-grid-rows", FLAG),
    (["--num-grid-rows", "101"], "--num-grid-rows", FLAG),
    (["--selected-panels", "nope"], "unknown panel 'nope'", FLAG),
    (["--selected-panels", "generated_text,nope"], "unknown panel 'nope'", FLAG),
    (["--selected-panels", "generated_text", "Attention"], "unknown panel 'Attention'", FLAG),
    (["--selected-panels", ","], "names no panel", FLAG),
    (["--selected-panels", "all", "attention"], "unknown panel 'all'", FLAG),
    (["--selected-panels", SUR], "not valid UTF-8", FLAG),
    (["--scale", "cubic"], "invalid choice", FLAG),
    (["--aggregation", "mean"], "invalid choice", FLAG),
    (["--format", "xml"], "invalid choice", FLAG),
    (["--dtype", "float64"], "invalid choice", FLAG),
    (["--backend", "vllm"], "invalid choice", FLAG),
    (["--interactive", "--prompt", "hi"], "--interactive needs a terminal", FLAG),
    # ---- mav: model, device, prompt, unknown flags ----
    (["--device", "gpu"], "unknown device 'gpu'", FLAG),
    (["--device", "cuda:x"], "unknown device", FLAG),
    (["--device", ""], "unknown device", FLAG),
    (["--device", "tpu:0"], "unknown device", FLAG),
    (["--model", "./no-such-model"], "no such file or directory", FLAG),
    (["--model", "/no/such/model/dir"], "no such file or directory", FLAG),
    (["--model", "missing.gguf"], "GGUF file not found", FLAG),
    (["--model", "{tmp}/empty_dir"], "no config.json", FLAG),
    (["--model", "{tmp}/a_file"], "is a file", FLAG),
    (["--model", "{tmp}/a_dir.gguf"], "GGUF file not found", FLAG),
    (["--model", "./" + "m" * 300], "File name too long", FLAG),
    (["--prompt", ""], "--prompt is empty", FLAG),
    (["--prompt", "   \n"], "--prompt is empty", FLAG),
    (["--prompt", SUR], "byte 0xff at character 1 is not UTF-8", FLAG),
    (["--prompt", LONE], "lone surrogate (U+D800)", FLAG),
    (["--prompt"], "expected one argument", FLAG),
    (["--bogus"], "unrecognized arguments: --bogus", FLAG),
    (["hello", "world"], "unrecognized arguments", FLAG),
    (["mapz"], "unrecognized arguments: mapz", FLAG),
    (["--max-new-tokens"], "expected one argument", FLAG),
    # ---- mav --record: nothing the user made is lost ----
    (["--record", "/no/such/dir/t.npz"], "does not exist", FLAG),
    (["--record", "{tmp}/existing.npz"], "already exists: pass --force", FLAG),
    (["--record", "{tmp}/a_dir"], "it is a directory", FLAG),
    (["--record", "{tmp}/a_dir", "--force"], "it is a directory", FLAG),
    (["--record", "{tmp}/a_file/t.npz"], "is a file, not a folder", FLAG),
    (["--record", ""], "--record needs a file name", FLAG),
    (["--record", "{tmp}/missing_dir/sub/t.npz"], "does not exist", FLAG),
    (["--record", "{tmp}/" + "r" * 300 + ".npz"], "File name too long", FLAG),
    (["--record", "{tmp}/ok.npz", "--temp", "nan"], "--temp", FLAG),
    (["--force", "--record", "{tmp}/ok.npz", "--seed", "-4"], "--seed", FLAG),
    # ---- mav maps ----
    (["maps"], "the following arguments are required: --prompt, --output-dir", FLAG),
    (["maps", "--output-dir", "{tmp}/maps"], "the following arguments are required: --prompt", FLAG),
    (["maps", "--prompt", "hi"], "required: --output-dir", FLAG),
    (["maps", "--prompt", "", "--output-dir", "{tmp}/maps"], "--prompt is empty", FLAG),
    (["maps", "--prompt", SUR, "--output-dir", "{tmp}/maps"], "not valid UTF-8", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--temp", "nan"], "--temp", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--temp", "inf"], "--temp", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--temp", "-0.5"], "--temp", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--top-p", "nan"], "--top-p", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--top-p", "2"], "--top-p", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--top-k", "-3"], "--top-k", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--min-p", "nan"], "--min-p", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--repetition-penalty", "inf"],
     "--repetition-penalty", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--repetition-penalty", "0"],
     "--repetition-penalty", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--seed", "99999999999999999999999"], "--seed", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--seed", "-1"], "--seed", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--max-new-tokens", "0"], "--max-new-tokens", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--max-new-tokens", "nan"], "invalid int", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--window", "0"], "--window must be at least 1", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--stride", "0"], "--stride must be at least 1", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--stride", "40"], "larger than --window", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--head", "-1"], "--head must be at least 0", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--head", "1", "--reduce", "mean"],
     "goes with --reduce head", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--reduce", "head"], "needs --head", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--reduce", "median"], "invalid choice", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--workers", "-1"], "--workers", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--workers", "5000"], "--workers", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--device", "gpu"], "unknown device", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--dtype", "int8"], "invalid choice", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--model", "./nope"], "no such file", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/a_file"], "exists and is not a directory", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/a_file/sub"], "cannot write to --output-dir", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", ""], "--output-dir is empty", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/" + "o" * 300], "File name too long", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/maps", "--bogus"], "unrecognized arguments", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/old_maps"], "already holds maps", FILE),
    # ---- mav compare ----
    (["compare", "--top-k", "0"], "--top-k must be at least 1", FLAG),
    (["compare", "--top-k", "-2"], "--top-k", FLAG),
    (["compare", "--top-k", "nan"], "invalid int", FLAG),
    (["compare", "--layer", "100001"], "--layer", FLAG),
    (["compare", "--layer", "-100001"], "--layer", FLAG),
    (["compare", "--layer", "1e9"], "invalid int", FLAG),
    (["compare", "--mode", "everything"], "invalid choice", FLAG),
    (["compare", "--mode", "custom", "--output-dir", "{tmp}/cmp"], "needs prompts", FLAG),
    (["compare", "--mode", "custom", "--prompt1", "only one", "--output-dir", "{tmp}/cmp"], "at least 2", FLAG),
    (["compare", "--mode", "custom", "--prompts", "a b", "   ", "--output-dir", "{tmp}/cmp"],
     "prompt 1 is empty", FLAG),
    (["compare", "--mode", "custom", "--prompt1", "", "--prompt2", "b"], "--prompt1 is empty", FLAG),
    (["compare", "--mode", "custom", "--prompt1", SUR, "--prompt2", "b"], "--prompt1 is not valid UTF-8", FLAG),
    (["compare", "--mode", "custom", "--prompts", "ok", LONE], "prompt 1 is not valid UTF-8", FLAG),
    (["compare", "--device", "gpu"], "unknown device", FLAG),
    (["compare", "--model", "./nope"], "no such file", FLAG),
    (["compare", "--model", "{tmp}/empty_dir"], "no config.json", FLAG),
    (["compare", "--output-dir", "{tmp}/a_file"], "exists and is not a directory", FLAG),
    (["compare", "--output-dir", "{tmp}/a_file/deeper"], "cannot write to --output-dir", FLAG),
    (["compare", "--output-dir", ""], "--output-dir is empty", FLAG),
    (["compare", "--output-dir", "{tmp}/previous"], "already holds 1 file of an earlier run", FLAG),
    (["compare", "--mode", "interactive", "--output-dir", "{tmp}/previous_i"], "pass --force", FLAG),
    (["compare", "--output-dir", "{tmp}/blocked"], "is a file, not a folder", FLAG),
    (["compare", "--prompts"], "expected at least one argument", FLAG),
    (["compare", "--bogus"], "unrecognized arguments", FLAG),
    # ---- loading options (mav maps, mav serve): device maps and quantization, before any model loads ----
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/q1", "--device-map", "everywhere"], "unknown --device-map", FLAG),
    (["maps", "--prompt", "hi", "--output-dir", "{tmp}/q2", "--load-in-8bit", "--load-in-4bit"], "exclude each other",
     FLAG),
    (["serve", "--device-map", ""], "--device-map", FLAG),
    (["serve", "--device-map", "gpu0"], "unknown --device-map", FLAG),
    # ---- mav serve: refused before binding a port or loading ----
    (["serve", "--port", "0"], "--port must be at least 1 and at most 65535", FLAG),
    (["serve", "--port", "-1"], "--port", FLAG),
    (["serve", "--port", "65536"], "--port", FLAG),
    (["serve", "--port", "99999999999999999999"], "--port", FLAG),
    (["serve", "--port", "http"], "invalid int value", FLAG),
    (["serve", "--port", "80.5"], "invalid int value", FLAG),
    (["serve", "--max-jobs", "0"], "--max-jobs", FLAG),
    (["serve", "--max-jobs", "-1"], "--max-jobs", FLAG),
    (["serve", "--max-jobs", "1001"], "--max-jobs", FLAG),
    (["serve", "--max-prompt-tokens", "0"], "--max-prompt-tokens", FLAG),
    (["serve", "--max-prompt-tokens", "inf"], "invalid int value", FLAG),
    (["serve", "--dtype", "float64"], "unknown dtype", FLAG),
    (["serve", "--device", "gpu"], "unknown device", FLAG),
    (["serve", "--model", "./nope"], "no such file", FLAG),
    (["serve", "--model", "gone.gguf"], "GGUF file not found", FLAG),
    (["serve", "--host", SUR], "--host is not valid UTF-8", FLAG),
    (["serve", "--host", "0.0.0.0"], "--host '0.0.0.0'", FLAG),  # not loopback, and no --allow-remote
    (["serve", "--bogus"], "unrecognized arguments", FLAG),
    (["serve", "--port"], "expected one argument", FLAG),
    # ---- mav replay: flags ----
    (["replay"], "required: file", FLAG),
    (["replay", "{tmp}/good.npz", "--delay", "-1"], "--delay", FLAG),
    (["replay", "{tmp}/good.npz", "--delay", "inf"], "--delay", FLAG),
    (["replay", "{tmp}/good.npz", "--delay", "nan"], "--delay", FLAG),
    (["replay", "{tmp}/good.npz", "--delay", "1e300"], "--delay", FLAG),
    (["replay", "{tmp}/good.npz", "--refresh-rate", "inf"], "--refresh-rate", FLAG),
    (["replay", "{tmp}/good.npz", "--selected-panels", "nope"], "unknown panel", FLAG),
    (["replay", "{tmp}/good.npz", "--limit-chars", "0"], "--limit-chars", FLAG),
    (["replay", "{tmp}/good.npz", "--format", "xml"], "invalid choice", FLAG),
    (["replay", "{tmp}/good.npz", "--interactive"], "--interactive needs a terminal", FLAG),
    (["replay", "{tmp}/good.npz", "extra"], "unrecognized arguments", FLAG),
    # ---- mav replay: files that are not traces (cheap checks: no torch) ----
    (["replay", "{tmp}/missing.npz"], "no trace file at", FLAG),
    (["replay", "{tmp}/a_dir"], "is a directory, not a trace file", FLAG),
    (["replay", "{tmp}/empty.npz"], "is empty (0 bytes)", FLAG),
    (["replay", "{tmp}/random.bin"], "not an openmav trace file (not an .npz archive)", FLAG),
    (["replay", "{tmp}/hello.npz"], "not an .npz archive", FLAG),
    (["replay", "/dev/null"], "not a regular file", FLAG),
    (["replay", ""], "no trace file given", FLAG),
    (["replay", "{tmp}/" + "t" * 300 + ".npz"], "File name too long", FLAG),
    # ---- mav replay: archives that are not (whole) traces ----
    (["replay", "{tmp}/array.npy"], "not an .npz archive", FLAG),
    (["replay", "{tmp}/truncated_10.npz"], "truncated or damaged", FILE),
    (["replay", "{tmp}/truncated_half.npz"], "truncated or damaged", FILE),
    (["replay", "{tmp}/truncated_last.npz"], "truncated or damaged", FILE),
    (["replay", "{tmp}/bad_crc.npz"], "damaged", FILE),
    (["replay", "{tmp}/plain.zip"], "has no __meta__ entry", FILE),
    (["replay", "{tmp}/other.npz"], "has no __meta__ entry", FILE),
    (["replay", "{tmp}/pickled.npz"], "not an openmav trace file", FILE),
    (["replay", "{tmp}/meta_float.npz"], "__meta__ entry is not text", FILE),
    (["replay", "{tmp}/meta_not_json.npz"], "header is not valid JSON", FILE),
    (["replay", "{tmp}/meta_not_utf8.npz"], "header is not valid JSON", FILE),
    (["replay", "{tmp}/meta_list.npz"], "does not say openmav-trace", FILE),
    (["replay", "{tmp}/wrong_format.npz"], "does not say openmav-trace", FILE),
    (["replay", "{tmp}/newer.npz"], "format version 99", FILE),
    (["replay", "{tmp}/version_text.npz"], "version is not a number", FILE),
    (["replay", "{tmp}/meta_not_dict.npz"], "meta is not a JSON object", FILE),
    (["replay", "{tmp}/prompt_number.npz"], "prompt is not text", FILE),
    (["replay", "{tmp}/panels_text.npz"], "selected_panels", FILE),
    (["replay", "{tmp}/unknown_panel.npz"], "names panels this openmav lacks (unknown panel 'sparkles'", FILE),
    (["replay", "{tmp}/tokens_list.npz"], "token table is malformed", FILE),
    (["replay", "{tmp}/token_id_text.npz"], "is not a number", FILE),
    (["replay", "{tmp}/sequence_unknown.npz"], "token sequence is malformed", FILE),
    (["replay", "{tmp}/records_dict.npz"], "step list is malformed", FILE),
    (["replay", "{tmp}/record_list.npz"], "step entry 0 is not a JSON object", FILE),
    (["replay", "{tmp}/step_negative.npz"], "no valid step number", FILE),
    (["replay", "{tmp}/no_position.npz"], "position lies outside", FILE),
    (["replay", "{tmp}/position_far.npz"], "position lies outside", FILE),
    (["replay", "{tmp}/token_unknown.npz"], "token is not in the token table", FILE),
    (["replay", "{tmp}/token_list.npz"], "token is not in the token table", FILE),
    (["replay", "{tmp}/prob_text.npz"], "chosen_prob is not a number", FILE),
    (["replay", "{tmp}/elapsed_negative.npz"], "bad elapsed_ms", FILE),
    (["replay", "{tmp}/elapsed_huge.npz"], "bad elapsed_ms", FILE),
    (["replay", "{tmp}/text_number.npz"], "generated_text is not text", FILE),
    (["replay", "{tmp}/flags_text.npz"], "bad flags", FILE),
    (["replay", "{tmp}/extra_list.npz"], "extra is not a JSON object", FILE),
    (["replay", "{tmp}/top_unknown.npz"], "bad top_text_ids", FILE),
    (["replay", "{tmp}/lens_bad.npz"], "bad lens_token_ids", FILE),
    (["replay", "{tmp}/arrays_unknown.npz"], "bad array list", FILE),
    (["replay", "{tmp}/array_missing.npz"], "the array s0.logits is missing", FILE),
    (["replay", "{tmp}/array_not_listed.npz"], "step 0 has no mlp_norms", FILE),
    (["replay", "{tmp}/array_strings.npz"], "is not numeric", FILE),
    (["replay", "{tmp}/array_ndim.npz"], "has 2 dimensions, not 1", FILE),
    (["replay", "{tmp}/logits_empty.npz"], "logits is empty", FILE),
    (["replay", "{tmp}/top_mismatch.npz"], "differ in length", FILE),
    (["replay", "{tmp}/top_outside.npz"], "outside the vocabulary", FILE),
    (["replay", "{tmp}/layers_mismatch.npz"], "disagree on the number of layers", FILE),
    (["replay", "{tmp}/attention_mismatch.npz"], "attention and attention_entropy differ", FILE),
    (["replay", "{tmp}/lens_mismatch.npz"], "logit lens arrays and token ids do not match", FILE),
    (["replay", "{tmp}/array_pickled.npz"], "damaged openmav trace", FILE),
    (["replay", "{tmp}/no_steps.npz"], "holds no steps", FILE),
]


# ---- prepared files ------------------------------------------------------------------------------

def _rewrite(src, dst, header=None, arrays=None, raw_meta=None):
    """Copy trace ``src`` to ``dst`` with its header and/or arrays edited in place."""
    with np.load(src) as data:
        content = {k: data[k] for k in data.files}
    head = json.loads(bytes(content["__meta__"]).decode("utf-8"))
    if header:
        head = header(head) or head
    if arrays:
        arrays(content)
    content["__meta__"] = raw_meta if raw_meta is not None else np.frombuffer(json.dumps(head).encode(), np.uint8)
    with open(dst, "wb") as fh:
        np.savez(fh, **content)


def _step(edit):
    def header(h):
        edit(h["records"][0])
    return header


def _prepare(tmp):
    from view_fixtures import make_record

    from openmav.capture.trace import save_trace

    (tmp / "empty_dir").mkdir()
    (tmp / "a_dir").mkdir()
    (tmp / "a_dir.gguf").mkdir()
    (tmp / "a_file").write_text("not a folder")
    (tmp / "existing.npz").write_bytes(b"the user's earlier recording")
    (tmp / "old_maps").mkdir()
    (tmp / "old_maps" / "maps.json").write_text("{}")
    (tmp / "previous" / "simple").mkdir(parents=True)
    (tmp / "previous" / "simple" / "differences.csv").write_text("kind,layer\n")
    (tmp / "previous_i" / "interactive").mkdir(parents=True)
    (tmp / "previous_i" / "interactive" / "layer_stats.png").write_bytes(b"png")
    (tmp / "blocked").mkdir()
    (tmp / "blocked" / "simple").write_text("a file where a folder goes")
    (tmp / "empty.npz").write_bytes(b"")
    (tmp / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "hello.npz").write_bytes(b"hello")
    np.save(tmp / "array.npy", np.arange(4))
    with zipfile.ZipFile(tmp / "plain.zip", "w") as z:
        z.writestr("readme.txt", "a zip, not a trace")
    np.savez(tmp / "other.npz", x=np.arange(3))
    np.savez(tmp / "pickled.npz", __meta__=np.array([{"format": "openmav-trace"}], dtype=object))
    np.savez(tmp / "meta_float.npz", __meta__=np.arange(3.0))
    for name, raw in (("meta_not_json", b"{not json"), ("meta_not_utf8", b"\xff\xfe{}"), ("meta_list", b"[1, 2]")):
        np.savez(tmp / f"{name}.npz", __meta__=np.frombuffer(raw, np.uint8))

    good = save_trace(tmp / "good.npz", [make_record(0), make_record(1)], {"model": "hand-made", "prompt": "The cat"})
    save_trace(tmp / "no_steps.npz", [], {"model": "hand-made"})
    data = good.read_bytes()
    (tmp / "truncated_10.npz").write_bytes(data[:10])
    (tmp / "truncated_half.npz").write_bytes(data[: len(data) // 2])
    (tmp / "truncated_last.npz").write_bytes(data[:-1])
    with zipfile.ZipFile(good) as z:  # flip a byte inside the first member's compressed data
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = bytearray(data)
    damaged[start + info.compress_size // 2] ^= 0xFF
    (tmp / "bad_crc.npz").write_bytes(bytes(damaged))

    def put(name, **kw):
        _rewrite(good, tmp / f"{name}.npz", **kw)

    put("wrong_format", header=lambda h: h.update(format="something-else"))
    put("newer", header=lambda h: h.update(version=99))
    put("version_text", header=lambda h: h.update(version="1"))
    put("meta_not_dict", header=lambda h: h.update(meta=["model"]))
    put("prompt_number", header=lambda h: h["meta"].update(prompt=42))
    put("panels_text", header=lambda h: h["meta"].update(selected_panels=7))
    put("unknown_panel", header=lambda h: h["meta"].update(selected_panels=["sparkles"]))
    put("tokens_list", header=lambda h: h.update(tokens=[["a", "a", "a"]]))
    put("token_id_text", header=lambda h: h["tokens"].update(x=["a", "a", "a"]))
    put("sequence_unknown", header=lambda h: h.update(sequence=[0, 1, 12345]))
    put("records_dict", header=lambda h: h.update(records={"0": {}}))
    put("record_list", header=lambda h: h.update(records=[[1, 2, 3]]))
    put("step_negative", header=_step(lambda s: s.update(step=-1)))
    put("no_position", header=_step(lambda s: s.pop("position")))
    put("position_far", header=_step(lambda s: s.update(position=10_000)))
    put("token_unknown", header=_step(lambda s: s.update(token=777)))
    put("token_list", header=_step(lambda s: s.update(token=[4])))
    put("prob_text", header=_step(lambda s: s.update(chosen_prob="high")))
    put("elapsed_negative", header=_step(lambda s: s.update(elapsed_ms=-5)))
    put("elapsed_huge", header=_step(lambda s: s.update(elapsed_ms=1e300)))
    put("text_number", header=_step(lambda s: s.update(generated_text=3)))
    put("flags_text", header=_step(lambda s: s.update(finished="yes")))
    put("extra_list", header=_step(lambda s: s.update(extra=[])))
    put("top_unknown", header=_step(lambda s: s.update(top_text_ids=[999])))
    put("lens_bad", header=_step(lambda s: s.update(lens_token_ids=[[999]])))
    put("arrays_unknown", header=_step(lambda s: s.update(arrays=s["arrays"] + ["sparkles"])))
    put("array_missing", arrays=lambda a: a.pop("s0.logits"))
    put("array_not_listed", header=_step(lambda s: s["arrays"].remove("mlp_norms")))
    put("array_strings", arrays=lambda a: a.update({"s0.mlp_norms": np.array(["a", "b", "c"])}))
    put("array_ndim", arrays=lambda a: a.update({"s0.mlp_norms": np.ones((3, 2), np.float32)}))
    put("logits_empty", arrays=lambda a: a.update({"s0.logits": np.zeros(0, np.float32)}))
    put("top_mismatch", arrays=lambda a: a.update({"s0.top_probs": np.ones(2, np.float32)}))
    put("top_outside", arrays=lambda a: a.update({"s0.top_ids": np.array([0, 1, 2, 3, 99])}))
    put("layers_mismatch", arrays=lambda a: a.update({"s0.mlp_norms": np.ones(7, np.float32)}))
    put("attention_mismatch", arrays=lambda a: a.update({"s0.attention_entropy": np.ones((3, 5), np.float32)}))
    put("lens_mismatch", arrays=lambda a: a.update({"s0.lens_ids": np.zeros((3, 4), np.int64)}))
    put("array_pickled", arrays=lambda a: a.update({"s0.mlp_norms": np.array([{"x": 1}] * 3, dtype=object)}))


HARNESS = textwrap.dedent("""
    import contextlib, io, json, sys, time, traceback
    cases = json.load(open(sys.argv[1]))
    from openmav.cli import main
    out = []

    def tripwire(*args, **kwargs):
        raise AssertionError("MODEL LOAD: a bad input reached the model loader")

    for n, (argv, kind) in enumerate(cases):
        if kind == "file" and "openmav.backends.loading" not in sys.modules:
            import openmav.backends as backends
            import openmav.backends.loading as loading
            loading.load_model = loading.wrap_model = tripwire
            backends.load_model = backends.wrap_model = tripwire
        err, std = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            try:
                code = main(argv)
            except BaseException:
                traceback.print_exc()
                code = "raised"
        out.append({"code": code, "err": err.getvalue(), "out": std.getvalue(),
                    "seconds": time.perf_counter() - start, "torch": "torch" in sys.modules})
    json.dump(out, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case (flag cases first, while torch is still unimported) in one fresh interpreter."""
    tmp = tmp_path_factory.mktemp("bad-input")
    _prepare(tmp)
    order = sorted(range(len(CASES)), key=lambda i: CASES[i][2] != FLAG)
    argvs = [([a.replace("{tmp}", str(tmp)) for a in CASES[i][0]], CASES[i][2]) for i in order]
    (tmp / "cases.json").write_text(json.dumps(argvs))
    (tmp / "harness.py").write_text(HARNESS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    before = {p.name for p in tmp.iterdir()}
    proc = subprocess.run([sys.executable, str(tmp / "harness.py"), str(tmp / "cases.json"), str(tmp / "out.json")],
                          capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp / "out.json").read_text())
    made = {p.name for p in tmp.iterdir()} - before - {"out.json"}
    return {i: r for i, r in zip(order, results)}, tmp, made


def _case_id(case):
    argv = " ".join(case[0]) or "(no arguments)"
    return argv.replace("{tmp}/", "").encode("ascii", "backslashreplace").decode()[:70]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_before_any_model(outcomes, index):
    results, tmp, made = outcomes
    argv, words, kind = CASES[index]
    r = results[index]
    shown = f"exit {r['code']}; stderr:\n{r['err']}\nstdout:\n{r['out']}"
    assert isinstance(r["code"], int) and r["code"] != 0, shown
    assert "Traceback" not in r["err"] + r["out"] and "MODEL LOAD" not in r["err"], shown
    lines = r["err"].strip().splitlines()
    assert 1 <= len(lines) <= 3 and r["out"] == "", shown
    assert words in r["err"], shown
    assert lines[0].startswith(f"mav {argv[0]}: error: " if argv and argv[0] in
                               ("maps", "compare", "serve", "replay") else "mav: error: "), shown
    if kind == FLAG:  # refused before torch was imported, so long before any model
        assert not r["torch"], f"torch was imported for a flag error: {shown}"
        assert r["seconds"] < 1.0, f"took {r['seconds']:.2f} s"
    assert not made, f"a refused command left files behind: {made}"


def test_table_is_big_enough():
    commands = {c[0][0] if c[0] and c[0][0] in ("maps", "compare", "serve", "replay") else "mav" for c in CASES}
    assert len(CASES) >= 150 and commands == {"mav", "maps", "compare", "serve", "replay"}


@pytest.mark.parametrize("argv", [
    ["--temp", "inf"],
    ["maps", "--output-dir", "x"],
    ["serve", "--port", "0"],
    ["--prompt", b"caf\xe9 au lait"],  # latin-1 bytes from a non-UTF-8 terminal
])
def test_flag_error_in_a_real_process_is_fast_and_never_imports_torch(argv, tmp_path):
    """``python -X importtime -m openmav ...``: one line, exit 2, no torch in the import log, well under 1 s."""
    best = None
    for _ in range(3):  # the quickest of three, so a busy machine does not fail the test
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "openmav", *argv], capture_output=True,
                              timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    err = proc.stderr.decode("utf-8", "replace")
    messages = [line for line in err.splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert proc.returncode == 2 and len(messages) == 1 and "Traceback" not in err, err[-2000:]
    assert "torch" not in imported and "numpy" not in imported and "transformers" not in imported
    assert best < 1.0, f"a flag error took {best:.2f} s"
