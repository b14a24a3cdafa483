"""Scans as a user runs them: the command line, every corpus format, SIGKILL and --resume, and Ray.

The model is a tiny random-weight Llama saved to a folder, so the command line and each Ray worker load
it by name the way they load a real checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import openmav
from openmav.errors import InputError
from test_scan import stdlib_docs, table_bytes, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["--context", "16", "--top-k", "3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_causal_lm, tiny_config, tiny_tokenizer

    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tiny_config("llama", len(tok)))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = stdlib_docs(12)
    return docs, write_jsonl(tmp_path_factory.mktemp("data") / "docs.jsonl", docs)


@pytest.fixture(scope="module")
def reference(model_dir, corpus, tmp_path_factory):
    """The uninterrupted in-process scan every other run must equal, table for table."""
    out = tmp_path_factory.mktemp("ref") / "scan"
    openmav.scan(str(model_dir), corpus[1], out, context=16, top_k=3, batch_size=2, shard_batches=1, device="cpu")
    return table_bytes(out)


def mav(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "openmav", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, **kwargs)


def test_command_line_scan_equals_the_api(model_dir, corpus, reference, tmp_path):
    out = tmp_path / "cli"
    proc = mav("scan", "--model", str(model_dir), "--data", str(corpus[1]), "--out", str(out), "--device", "cpu",
               *SETTINGS, "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert [e["shards_done"] for e in events if e["event"] == "shard"] == list(range(1, len(events) - 2))
    for name, table in table_bytes(out).items():
        assert table.equals(reference[name]), name
    again = mav("scan", "--model", str(model_dir), "--data", str(corpus[1]), "--out", str(out), "--device", "cpu",
                *SETTINGS)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "pass --resume" in again.stderr


def test_text_mode_prints_one_summary_line(model_dir, corpus, tmp_path):
    proc = mav("scan", "--model", str(model_dir), "--data", str(corpus[1]), "--out", str(tmp_path / "t"),
               "--device", "cpu", *SETTINGS, "--max-tokens", "100", "--layers", "1", "--units", "heads")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "over 100 tokens" in proc.stdout and "1 layers, heads" in proc.stdout
    scan = openmav.scan.open(tmp_path / "t")
    assert set(scan.table("units").kind) == {"head", "resid"} and set(scan.table("units").layer) == {1}


def test_every_corpus_format_gives_the_same_documents(model_dir, corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [d for d in corpus[0] if "\n" not in d][:4] or [d.replace("\n", " ") for d in corpus[0][:4]]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"{i:02d}.md").write_text(doc)
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    pq.write_table(pa.table({"body": docs}), tmp_path / "docs.parquet")
    write_jsonl(tmp_path / "docs.jsonl", docs)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "saved"))
    runs = {"txt": (tmp_path / "docs.txt", "text"), "jsonl": (tmp_path / "docs.jsonl", "text"),
            "parquet": (tmp_path / "docs.parquet", "body"), "folder": (folder, "text"),
            "datasets": (tmp_path / "saved", "text")}
    units = {}
    for kind, (data, field) in runs.items():
        scan = openmav.scan(str(model_dir), data, tmp_path / f"scan-{kind}", text_field=field, context=16, top_k=3,
                            device="cpu", layers="0")
        documents = scan.table("documents")
        assert list(documents.chars) == [len(d) for d in docs], kind
        units[kind] = scan.table("units")
    for kind, table in units.items():
        assert table.equals(units["txt"]), kind


def test_sigkill_at_random_moments_then_resume_gives_the_same_tables(model_dir, corpus, reference, tmp_path):
    out = tmp_path / "killed"
    args = ["scan", "--model", str(model_dir), "--data", str(corpus[1]), "--out", str(out), "--device", "cpu",
            *SETTINGS, "--format", "jsonl"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    rng = random.Random(7)
    kills = 0
    for attempt in range(4):
        cmd = [sys.executable, "-m", "openmav", *args, *(["--resume"] if out.exists() else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        shards_seen = 0
        target = rng.randint(1, 4)
        for line in proc.stdout:  # kill after a few shards, at a random moment inside the next one
            if json.loads(line)["event"] == "shard":
                shards_seen += 1
                if shards_seen == target:
                    time.sleep(rng.random() * 0.3)
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    break
        proc.wait(timeout=600)
        if proc.returncode == 0:
            break
    assert kills >= 1
    final = mav(*args, "--resume")
    assert final.returncode == 0, final.stderr
    assert not [p for p in out.rglob("*") if ".partial." in p.name]
    for name, table in table_bytes(out).items():
        assert table.equals(reference[name]), name


def _ray_worker_pids() -> list[int]:
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any("ray::Worker" in part for part in proc.info["cmdline"] or []):
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.mark.ray
def test_ray_scan_with_a_worker_killed_mid_shard_equals_the_in_process_scan(model_dir, corpus, reference, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    result: dict = {}
    progress = []

    def run():
        try:
            result["scan"] = openmav.scan(str(model_dir), corpus[1], out, context=16, top_k=3, batch_size=2,
                                          shard_batches=1, device="cpu", ray=True, ray_workers=2,
                                          progress=progress.append)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        if any(e["event"] == "shard" for e in progress):  # the actors are up and working: kill one mid-shard
            pids = _ray_worker_pids()
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert killed is not None, "no Ray worker was seen to kill"
    for name, table in table_bytes(out).items():
        assert table.equals(reference[name]), name


def test_ray_missing_is_one_line(monkeypatch, corpus, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InputError, match=r"pip install 'openmav\[ray\]'"):
        openmav.scan("smollm2-135m", corpus[1], tmp_path / "r", ray=True)
