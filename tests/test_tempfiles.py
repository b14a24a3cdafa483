"""Nothing left behind: temporaries removed on every exit path that runs code, stale ones swept by the next
run, one line for an output folder that cannot be written, spreadsheet-safe CSV, no third-party bars.

Real processes are killed here (SIGTERM, kill -9), a few times each; the 20-kill count per writing command
is ``bench/kill_temp_files.py``.
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from openmav.capture import tempfiles
from openmav.capture.trace import PARTIAL, replacing
from openmav.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is Paris. The capital of Italy is"

# A child that makes a temporary through replacing(), says so, and waits to be stopped.
HOLDER = textwrap.dedent("""
    import sys, time
    from openmav.capture.trace import replacing
    with replacing(sys.argv[1]) as tmp:
        open(tmp, "wb").write(b"half")
        print(tmp, flush=True)
        time.sleep(60)
""")


def partials(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if PARTIAL.fullmatch(n))


def start_holder(target: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.communicate(timeout=30)[1]
    return proc, Path(line)


def age(path: Path, seconds: float = 60) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sigterm_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "run.npz"
    target.write_bytes(b"yesterday")
    proc, tmp = start_holder(target)
    try:
        assert tmp.exists() and tmp.parent == tmp_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert os.listdir(tmp_path) == ["run.npz"] and target.read_bytes() == b"yesterday"


def test_a_killed_writers_temporary_is_swept_by_the_next_write_in_that_folder(tmp_path):
    target = tmp_path / "run.npz"
    proc, tmp = start_holder(target)
    try:
        age(tmp)  # old, but its writer is alive and holds it: kept
        assert tempfiles.sweep(tmp_path, PARTIAL).removed == [] and tmp.exists()
        proc.kill()  # kill -9: no code runs, the temporary stays...
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert partials(tmp_path) == [tmp.name]
    with replacing(target) as new:  # ...until the next write into that folder
        new.write_bytes(b"today")
        assert partials(tmp_path) == [new.name]
    assert os.listdir(tmp_path) == ["run.npz"] and target.read_bytes() == b"today"


def test_sweep_keeps_young_unmatched_and_held_names(tmp_path):
    young = tmp_path / ".a.npz.abcd1234.partial.npz"
    young.write_bytes(b"x")  # just made: its writer may not have locked it yet
    other = tmp_path / "notes.partial.txt"
    other.write_bytes(b"x")
    age(other)
    mine = tmp_path / ".b.npz.efgh5678.partial.npz"
    mine.write_bytes(b"x")
    tempfiles.hold(mine)
    try:
        age(mine)
        swept = tempfiles.sweep(tmp_path, PARTIAL)
        assert swept.removed == [] and young.exists() and other.exists() and mine.exists()
        age(young)
        assert tempfiles.sweep(tmp_path, PARTIAL).removed == [str(young)]
    finally:
        tempfiles.release(mine)
    assert sorted(os.listdir(tmp_path)) == ["notes.partial.txt"]


# ---- mav maps -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("llama", n_layers=2)
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def maps_args(model_dir: str, out: Path, workers: int = 0) -> list[str]:
    return ["maps", "--model", model_dir, "--prompt", PROMPT, "--output-dir", str(out), "--max-new-tokens", "4",
            "--window", "8", "--stride", "4", "--workers", str(workers), "--device", "cpu"]


@pytest.mark.parametrize("workers", [0, 2])
def test_maps_output_folder_failing_mid_run_is_one_line_and_leaves_no_temporary(model_dir, tmp_path, capsys,
                                                                                monkeypatch, workers):
    from PIL import Image

    out = tmp_path / "out"
    real_save = Image.Image.save
    saved = []

    def full_disk(self, fp, *args, **kwargs):  # the third image finds the disk full
        if len(saved) >= 2 or workers:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    capsys.readouterr()
    assert main(maps_args(model_dir, out, workers)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], err
    assert "Traceback" not in err
    left = [n for n in os.listdir(out) if not (n.startswith("attn_") and n.endswith(".png"))]
    assert sorted(left) == ["maps.html", "maps.json"]  # the images written before it are whole, nothing else
    assert os.listdir(tmp_path / "tmp") == []  # the sheet folder went too


def test_maps_sweeps_what_a_killed_run_left_and_shows_no_bars(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    stale = [out / "maps.json.part", out / "maps.html.part", out / "attn_0_1.png.part",
             out / ".maps.json.k9x2ab7q.partial.json", out / ".mav-probe-abcdefgh"]
    for path in stale:
        path.write_bytes(b"left by kill -9")
        age(path)
    sheet = private_tmp / "openmav-maps-zz11yy22"
    sheet.mkdir()
    (sheet / "sheet.npz").write_bytes(b"half")
    age(sheet)
    kept = out / "my-notes.part"  # not a name maps makes
    kept.write_bytes(b"mine")
    age(kept)
    env = dict(os.environ, TMPDIR=str(private_tmp), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "openmav", *maps_args(model_dir, out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not any(p.exists() for p in stale) and not sheet.exists() and kept.exists()
    assert os.listdir(private_tmp) == []
    assert not [n for n in os.listdir(out) if "part" in n and n != kept.name]
    for bar in ("Loading weights", "de-quantizing", "%|"):
        assert bar not in run.stderr, run.stderr[-2000:]


# ---- mav compare's CSV ----------------------------------------------------------------------------------------
def test_spreadsheet_text_guards_formulas_but_not_numbers():
    from openmav.cli.compare import spreadsheet_text

    for cell in ("=HYPERLINK(\"http://evil\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "-", "=", "--x"):
        assert spreadsheet_text(cell) == "'" + cell
    for cell in ("-0.25", "+3", "1e-05", "-1.5E+07", "0", "text", "", " =not first", "head", "1..5"):
        assert spreadsheet_text(cell) == cell


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_compare_csv_writes_formula_prompts_as_text(gpt2_dir, tmp_path):
    evil = '=HYPERLINK("http://evil","click")'
    prompts = [evil, "@SUM(1+2) is three", "The cat sat on the mat"]
    assert main(["compare", "--mode", "custom", "--prompt1", prompts[0], "--prompt2", prompts[1],
                 "--prompts", prompts[2], "--model", gpt2_dir, "--output-dir", str(tmp_path), "--top-k", "2"]) == 0
    with open(tmp_path / "custom" / "differences.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    text = next(r for r in rows if r["metric"] == "text")
    assert [text[f"prompt_{i}"] for i in range(3)] == ["'" + prompts[0], "'" + prompts[1], prompts[2]]
    numbers = [r[k] for r in rows if r["kind"] != "prompt" for k in r if k.startswith("prompt_") or k == "difference"]
    assert numbers and all(float(v) == float(v) for v in numbers)  # still numbers, negative ones included
    cells = [c for r in rows for c in r.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")]


def test_compare_unwritable_output_is_one_line(gpt2_dir, tmp_path, capsys, monkeypatch):
    import openmav.analysis.compare as compare

    def full(rows, prompts, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(compare, "write_csv", full)
    assert main(["compare", "--mode", "custom", "--prompt1", "The cat sat", "--prompt2", "A dog ran",
                 "--model", gpt2_dir, "--output-dir", str(tmp_path), "--top-k", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "differences.csv" in err and "No space left" in err, err
    assert not [n for n in os.listdir(tmp_path / "custom") if "partial" in n]
