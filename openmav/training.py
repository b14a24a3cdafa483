"""Watching a model while it trains: a ``TrainerCallback`` and a helper for plain loops.

Every ``every`` steps the model is switched to eval mode, generates a few tokens
from a fixed prompt with the capture engine, and the MAV panels of the last token
are printed (a snapshot into the log, so training output keeps scrolling; pass
``format="live"`` for the live view).  The model's train/eval mode is restored
afterwards and the global RNG is left alone (no reseeding), so training goes on
exactly as it would have.
"""

from __future__ import annotations

from transformers import TrainerCallback

from .rules import MAX_NEW_TOKENS, Number, check_text

DEFAULT_PANELS = ["generated_text", "top_predictions", "mlp_activations", "attention_entropy"]
EVERY = Number(int, 0, None, why="0 turns the view off")


def show_model(model, tokenizer, prompt: str, step: int | None = None, max_new_tokens: int = 8,
               selected_panels=None, console=None, format: str = "snapshot", **mav_kwargs):
    """One MAV view of ``model`` now; returns the :class:`~openmav.mav.MAVResult`."""
    import torch

    from .mav import MAV

    was_training = model.training
    model.eval()
    rng = torch.get_rng_state()
    try:
        name = "model" if step is None else f"step {step}"
        return MAV(model=name, prompt=prompt, max_new_tokens=max_new_tokens, model_obj=model,
                   tokenizer_obj=tokenizer, seed=None, selected_panels=selected_panels or DEFAULT_PANELS,
                   console=console, format=format, **mav_kwargs)
    finally:
        torch.set_rng_state(rng)
        model.train(was_training)


def visualize_every(model, tokenizer, step: int, every: int = 50, prompt: str = "The", **kwargs):
    """For a plain PyTorch loop: show the view when ``step`` is a multiple of ``every`` (returns the result
    or ``None``)."""
    EVERY.check("every", every)
    Number(int, 0, None).check("step", step)
    if every <= 0 or step % every:
        return None
    return show_model(model, tokenizer, prompt, step=step, **kwargs)


class MAVCallback(TrainerCallback):
    """``Trainer(..., callbacks=[MAVCallback(tokenizer, "Once upon", every_n_steps=50)])``.

    Shows the view at every ``every_n_steps``-th optimizer step; ``results`` keeps
    ``(step, MAVResult)`` of each view.
    """

    def __init__(self, tokenizer, prompt: str = "The", every_n_steps: int = 50, max_new_tokens: int = 8,
                 selected_panels=None, console=None, format: str = "snapshot", **mav_kwargs):
        EVERY.check("every_n_steps", every_n_steps)
        check_text("prompt", prompt, allow_empty=False)
        MAX_NEW_TOKENS.check("max_new_tokens", max_new_tokens)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.every = int(every_n_steps)
        self.kwargs = dict(max_new_tokens=max_new_tokens, selected_panels=selected_panels, console=console,
                           format=format, **mav_kwargs)
        self.results: list = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.every > 0 and state.global_step % self.every == 0:
            result = show_model(model, self.tokenizer, self.prompt, step=state.global_step, **self.kwargs)
            self.results.append((state.global_step, result))
        return control
