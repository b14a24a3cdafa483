"""Nothing the user made is lost: ``--record`` and ``mav compare`` never clobber files.

An existing recording is kept unless ``--force``; a bad target (missing folder, a file
where the folder should be, a directory as FILE) is refused before the model loads; a
save is written beside the target and renamed into place, so Ctrl-C during the save
(simulated in-process, and a real SIGINT to a real ``mav`` process) leaves the old
file byte-identical and no temporary file behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from openmav.cli import main

OLD = b"the recording the user made yesterday"
RUN = ["--prompt", "hello world", "--max-new-tokens", "3", "--format", "jsonl", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any model load fail the test (the refusals must come first)."""
    import openmav.mav

    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad --record was refused")

    monkeypatch.setattr(openmav.mav, "_load_backend", tripwire)


def _interrupting_savez(monkeypatch):
    """Make the trace serializer write half an archive, then get Ctrl-C."""
    def savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half of an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", savez)


def test_existing_recording_is_kept_without_force(model_dir, tmp_path, capsys, no_model_load):
    target = tmp_path / "run.npz"
    target.write_bytes(OLD)
    assert main(["--model", model_dir, *RUN, "--record", str(target)]) == 2
    err = capsys.readouterr().err
    assert "already exists: pass --force" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == OLD and sorted(os.listdir(tmp_path)) == ["run.npz"]


@pytest.mark.parametrize("where,message", [
    ("missing/run.npz", "does not exist"),
    ("missing/deeper/run.npz", "does not exist"),
    ("a_file/run.npz", "is a file, not a folder"),
    ("a_dir", "it is a directory"),
])
def test_bad_record_target_refused_before_load(model_dir, tmp_path, capsys, no_model_load, where, message):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    for force in ([], ["--force"]):
        assert main(["--model", model_dir, *RUN, "--record", str(tmp_path / where), *force]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "a_file"] and not os.listdir(tmp_path / "a_dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_refused_before_load(model_dir, tmp_path, capsys, no_model_load):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["--model", model_dir, *RUN, "--record", str(folder / "run.npz")]) == 2
    finally:
        folder.chmod(0o700)
    assert "does not take new files" in capsys.readouterr().err


def test_force_replaces_by_rename_and_says_where(model_dir, tmp_path, capsys):
    from openmav.capture.trace import load_trace

    target = tmp_path / "run.npz"
    target.write_bytes(OLD)
    os.chmod(target, 0o640)
    assert main(["--model", model_dir, *RUN, "--record", str(target), "--force"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == f"mav: saved 3 steps to {target} (mav replay {target} shows them)"
    meta, records = load_trace(target)
    assert len(records) == 3 and meta["prompt"] == "hello world"
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]  # no temporary file left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file, with the usual permissions


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    from view_fixtures import make_record

    from openmav.capture.trace import save_trace

    target = tmp_path / "run.npz"
    target.write_bytes(OLD)
    _interrupting_savez(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_trace(target, [make_record()], {"model": "x"})
    assert target.read_bytes() == OLD and sorted(os.listdir(tmp_path)) == ["run.npz"]
    with pytest.raises(KeyboardInterrupt):  # a first save, interrupted, leaves nothing at all
        save_trace(tmp_path / "new.npz", [make_record()])
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]


def test_interrupted_save_through_the_cli(model_dir, tmp_path, capsys, monkeypatch):
    target = tmp_path / "run.npz"
    target.write_bytes(OLD)
    _interrupting_savez(monkeypatch)
    assert main(["--model", model_dir, *RUN, "--record", str(target), "--force"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert target.read_bytes() == OLD and sorted(os.listdir(tmp_path)) == ["run.npz"]


def test_save_trace_api_refuses_what_it_must_not_replace(tmp_path):
    from view_fixtures import make_record

    from openmav.capture.trace import save_trace
    from openmav.errors import InputError

    target = tmp_path / "run.npz"
    target.write_bytes(OLD)
    with pytest.raises(InputError, match="already exists"):
        save_trace(target, [make_record()], overwrite=False)
    with pytest.raises(InputError, match="is a directory"):
        save_trace(tmp_path, [make_record()])
    assert target.read_bytes() == OLD


DRIVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from openmav.cli import main

    def slow_savez(fh, **arrays):  # a save that takes long enough to be interrupted in the middle
        fh.write(b"PK\\x03\\x04 the first part of the archive")
        fh.flush()
        time.sleep(120)

    np.savez_compressed = slow_savez
    sys.exit(main(sys.argv[1:]))
""")


def test_real_sigint_during_save_keeps_the_old_file(model_dir, tmp_path):
    """A real ``mav --record FILE --force`` process gets SIGINT while its save is half written."""
    folder = tmp_path / "runs"
    folder.mkdir()
    target = folder / "run.npz"
    target.write_bytes(OLD)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), "--model", model_dir, *RUN, "--record", str(target),
                             "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while not [n for n in os.listdir(folder) if n.endswith(".partial.npz")]:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the save never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130 and err.strip().endswith("mav: interrupted") and "Traceback" not in err, err
    assert target.read_bytes() == OLD and os.listdir(folder) == ["run.npz"]
    assert len(out.decode().splitlines()) == 3  # the run itself went through


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_compare_keeps_an_earlier_run(gpt2_dir, tmp_path, capsys, monkeypatch):
    args = ["compare", "--mode", "custom", "--prompt1", "The cat sat", "--prompt2", "A dog ran", "--model", gpt2_dir,
            "--output-dir", str(tmp_path), "--top-k", "2"]
    assert main(args) == 0
    folder = tmp_path / "custom"
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "differences.csv" in first and not [n for n in first if "partial" in n]
    capsys.readouterr()
    assert main(args) == 2  # a second run without --force is refused before the model loads
    err = capsys.readouterr().err
    assert "already holds 7 files of an earlier run" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first

    import openmav.analysis.compare as compare

    def interrupted_csv(rows, prompts, path):  # Ctrl-C while the table is half written
        with open(path, "w") as fh:
            fh.write("kind,la")
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "write_csv", interrupted_csv)
    assert main([*args, "--force"]) == 130
    assert (folder / "differences.csv").read_bytes() == first["differences.csv"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(first)  # no temporary file left
