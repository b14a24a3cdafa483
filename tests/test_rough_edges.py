"""The small rough edges a new user hit (issue 22, part 6): each test fails without its fix."""

from __future__ import annotations

import json

import pytest


def _model_folder(path, tokenizer_config: dict | None, *extra: str):
    """A model folder with a config and tokenizer files but no weights: anything that loads it fails."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in extra:
        (path / name).write_text("{{ messages[0]['content'] }}")
    return path


def test_maps_chat_without_a_template_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import openmav.backends.loading as loading
    from openmav.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    folder = _model_folder(tmp_path / "plain", {"tokenizer_class": "PreTrainedTokenizerFast"})
    code = main(["maps", "--chat", "--prompt", "Hi", "--output-dir", str(tmp_path / "out"), "--model", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"mav maps: error: --chat: {folder}'s tokenizer has no chat template; drop --chat"]


def test_the_chat_template_is_read_from_the_tokenizer_files(tmp_path):
    from openmav.backends.sources import has_chat_template

    assert has_chat_template(str(_model_folder(tmp_path / "none", {}))) is False
    assert has_chat_template(str(_model_folder(tmp_path / "config", {"chat_template": "{{ x }}"}))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "jinja", {}, "chat_template.jinja"))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "legacy", {}, "chat_template.json"))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "no-config", None))) is None  # not told: checked after
    assert has_chat_template("no-such-owner/no-such-model-in-the-cache") is None


@pytest.mark.parametrize("chat", [True, False])
def test_maps_chat_check_lets_a_model_with_a_template_through_to_loading(tmp_path, monkeypatch, chat):
    import openmav.backends.loading as loading
    from openmav.errors import ModelSourceError
    from openmav.maps.run import MapsOptions, run_maps

    def loads(*args, **kwargs):
        raise ModelSourceError("loading")

    monkeypatch.setattr(loading, "load_model", loads)
    folder = _model_folder(tmp_path / "jinja", {}, "chat_template.jinja")
    with pytest.raises(ModelSourceError, match="loading"):
        run_maps(MapsOptions(model=str(folder), prompt="Hi", output_dir=str(tmp_path / "out"), chat=chat))
