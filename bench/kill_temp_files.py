"""Count the temporary files that kill -9 leaves, for each command that writes files.

    .venv/bin/python bench/kill_temp_files.py [--kills 20] [--seed 0] [--model DIR]

For each writing command (``mav --record``, ``mav maps``, ``mav compare``, and a model-cache
rebuild), one complete run is timed, then the command is started ``--kills`` times and sent
SIGKILL at a random moment: three kills in four come while it writes (a random 0-50 ms or
0-500 ms after its first temporary file appears, so the kill lands among the writes), the
others at a random moment of the second half of a complete run and a little past it.  After every kill it
counts the temporaries in the output folder (``.NAME.XXXXXXXX.partial.EXT``, ``*.part``,
``.mav-probe-*``), in a private system temporary folder (``openmav-maps-*``: ``$TMPDIR`` points
there) and, for the cache, ``.tmp-*``/``.trash-*`` folders and ``*.tmp`` files.  Each run sweeps
what the previous kill left, so the count after a kill is at most what that one kill left.  At
the end one more complete run is made and the count taken again (expected: 0).  Every earlier
output is checked to be whole after each kill: a file present is either the old one or the new one.

Without ``--model`` a tiny random-weight Llama is saved to a temporary folder (no download);
the cache rebuild uses a tiny GGUF-like file and a converter that writes a tiny model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.partial(\.[^./]*)?|.*\.part|\.mav-probe-.*|openmav-maps-.*"
                       r"|\.tmp-.*|\.trash-.*|.*\.tmp")
PROMPT = "The capital of France is Paris. The capital of Italy is"

# A cache rebuild: convert a fake GGUF with a converter that writes a tiny model slowly enough to be killed.
CACHE_CHILD = r"""
import sys, time
from pathlib import Path
from openmav.backends import sources
from openmav.testing import tiny_model
lm = tiny_model("llama")
def converter(src, out):
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
entry = sources.converted_root() / sources.gguf_sha256(Path(sys.argv[1]))
if entry.exists():  # a damaged entry, as if a byte changed: rebuilt
    with open(entry / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
sources.convert_gguf(Path(sys.argv[1]), converter=converter)
"""


def tiny_model_dir(folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from openmav.testing import tiny_model

    lm = tiny_model("llama", n_layers=2)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def temporaries(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                if TEMPORARY.fullmatch(name) and name != ".locks":
                    found.append(os.path.join(dirpath, name))
            dirnames[:] = [d for d in dirnames if not TEMPORARY.fullmatch(d)]
    return sorted(found)


def digests(folder: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if not TEMPORARY.fullmatch(name):
                path = os.path.join(dirpath, name)
                out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def commands(model: str, work: Path) -> dict[str, tuple[list[str], Path]]:
    mav = [sys.executable, "-m", "openmav"]
    record, maps, compare, cache = work / "record", work / "maps", work / "compare", work / "cache"
    for folder in (record, maps, compare, cache):
        folder.mkdir()
    gguf = work / "fake.gguf"
    gguf.write_bytes(b"a stand-in for a GGUF file: the cache keys entries by its sha256")
    return {
        "mav --record": ([*mav, "--model", model, "--prompt", PROMPT, "--max-new-tokens", "200", "--format", "jsonl",
                          "--device", "cpu", "--record", str(record / "f.npz"), "--force"], record),
        "mav maps": ([*mav, "maps", "--model", model, "--prompt", PROMPT, "--max-new-tokens", "12",
                      "--output-dir", str(maps), "--overwrite", "--window", "8", "--stride", "2",
                      "--workers", "2", "--device", "cpu"], maps),
        "mav compare": ([*mav, "compare", "--mode", "custom", "--prompt1", "The cat sat on the mat",
                         "--prompt2", "A dog ran in the park", "--model", model, "--output-dir", str(compare),
                         "--force", "--top-k", "3"], compare),
        "cache rebuild": ([sys.executable, "-c", CACHE_CHILD, str(gguf)], cache),
    }


def run_once(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="a model folder (default: a tiny random Llama)")
    p.add_argument("--only", default=None, help="one command's name, e.g. 'mav maps'")
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="kill-temp-") as root:
        work = Path(root)
        model = args.model or tiny_model_dir(work / "model")
        private_tmp = work / "tmp"
        private_tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(private_tmp), HF_HUB_OFFLINE="1", OPENMAV_CACHE=str(work / "cache"),
                   PYTHONPATH=str(ROOT))
        rows = []
        for name, (cmd, out) in commands(model, work).items():
            if args.only and name != args.only:
                continue
            full = run_once(cmd, env)
            before = digests(out)
            after_kill, torn = [], 0
            for _ in range(args.kills):
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                if rng.random() < 0.75:  # while it writes
                    old = set(temporaries(out, private_tmp))
                    end = time.monotonic() + 3 * full
                    while proc.poll() is None and time.monotonic() < end and \
                            not set(temporaries(out, private_tmp)) - old:
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0, rng.choice((0.05, 0.5))))
                else:
                    time.sleep(rng.uniform(0.5 * full, 1.1 * full))
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the command and its image-writing workers
                except ProcessLookupError:
                    pass
                proc.wait()
                after_kill.append(len(temporaries(out, private_tmp)))
                now = digests(out)
                torn += sum(1 for path, digest in now.items() if path in before and digest != before[path]
                            and not _whole(path))
                before.update(now)
            stuck = temporaries(out, private_tmp)
            run_once(cmd, env)
            final = temporaries(out, private_tmp)
            rows.append((name, full, args.kills, max(after_kill), len(stuck), len(final), torn, final))
            print(f"{name:<14} full run {full:5.1f} s; after each of {args.kills} kills at most {max(after_kill)} "
                  f"temporary (left by that kill), {len(stuck)} after the last kill, {len(final)} after one more "
                  f"complete run; {torn} torn outputs", flush=True)
            for path in final:
                print(f"    left: {path}")
        print("\n| command | complete run | kills | temporaries after a kill (max) | after the last kill | "
              "after the next run |")
        print("|---|---|---|---|---|---|")
        for name, full, kills, worst, stuck, final, _, _ in rows:
            print(f"| `{name}` | {full:.1f} s | {kills} | {worst} | {stuck} | {final} |")
        shutil.rmtree(private_tmp, ignore_errors=True)
    return 0


def _whole(path: str) -> bool:
    """Whether an output file is complete: a PNG or npz that opens, JSON that parses, any other file."""
    try:
        if path.endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif path.endswith(".npz"):
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
        elif path.endswith(".json"):
            import json

            json.loads(open(path, encoding="utf-8").read())
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
