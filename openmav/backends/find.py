"""Find a model's parts, from its family's declared row or a row inferred from its module tree, and verify them.

The third and fourth steps of the load path (:mod:`openmav.backends.loading`): a row is
resolved on the model (:mod:`~openmav.backends.parts`), then checked on the model itself
(:mod:`~openmav.backends.verify`, which drives the capture engine).  A verdict already reached
for the same model, row, dtype, device type and library versions is read back from
:mod:`~openmav.backends.verified` instead of running the checks again.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UnsupportedModelError
from .adapters import declared_adapter
from .parts import ModelParts


def find_parts(model, verify: bool = True, location: str | None = None, reverify: bool = False) -> ModelParts:
    """The parts of ``model``: its family's declared row, else a row inferred from the module tree.

    Either way the row is checked on the model itself (:func:`openmav.backends.verify.verify_parts`)
    unless ``verify`` is false; a declared row that fails (a variant of the family) falls
    back to inference.  A cached step is checked against an uncached forward too: where
    they differ, the step loop runs the whole sequence each step (``parts.cached_steps``).  One line
    names what failed when neither passes.

    ``location``: where :func:`~openmav.backends.loading.load_model` read the weights from; with it,
    a verdict reached before for the same model and library versions is used instead of verifying
    again (:mod:`openmav.backends.verified`), unless ``reverify``.  Without it (a model object the
    caller built) the row is always verified.
    """
    key = None
    if verify and location is not None:
        from .verified import recall, verdict_key

        key = verdict_key(model, location)
        known = None if reverify else recall(key)
        if known is not None:
            try:
                parts = ModelParts.resolve(model, known["row"], inferred=known["inferred"])
                return replace(parts, cached_steps=known["cached_steps"], rows_function=known["rows_function"])
            except Exception:  # noqa: BLE001 - a row that no longer resolves: verify as if never seen
                pass
    parts = _find_and_verify(model, verify)
    if key is not None:
        from .verified import remember

        remember(key, parts.adapter, parts)
    return parts


def _find_and_verify(model, verify: bool) -> ModelParts:
    from .verify import verify_parts

    config = model.config
    model_type = getattr(config, "model_type", None)
    declared = declared_adapter(model_type, getattr(model, "base_model_prefix", None))
    failures = []
    if declared is not None:
        try:
            parts = ModelParts.resolve(model, declared)
            if verify:
                return _checked(model, parts, verify_parts(model, parts))
            return parts
        except Exception as exc:  # noqa: BLE001 - any failure of a row is a reason to try inference
            failures.append(f"declared adapter {declared.name}: {_reason(exc)}")
    try:
        from .infer import infer_adapter  # only here: a declared row needs no search

        parts = ModelParts.resolve(model, infer_adapter(model), inferred=True)
        return _checked(model, parts, verify_parts(model, parts))
    except Exception as exc:  # noqa: BLE001 - reported as one line below
        failures.append(f"inferred adapter: {_reason(exc)}")
    raise UnsupportedModelError(f"{type(model).__name__} ({model_type}) cannot be read safely: "
                                f"{'; '.join(failures)}. {_advice(model, failures)}")


def _checked(model, parts: ModelParts, reference) -> ModelParts:
    """The load-time checks beyond the invariants, on the invariants' reference forward: cached steps
    and the fast attention-rows function, in the attention implementations the step loop runs
    (:func:`openmav.backends.verify.check_steps`)."""
    from .verify import check_steps

    rows, cached = check_steps(model, parts, reference)
    return replace(parts, cached_steps=cached, rows_function=rows)


HALF = ("float16", "bfloat16")
NUMERIC = ("relative error", "differs from", "do not sum to")  # failures a lower precision's rounding can cause


def _advice(model, failures: list[str]) -> str:
    """What to try after a refusal: float32 only where the model runs in half precision and a check failed by
    its numbers (rounding can be the cause); otherwise nothing about dtype."""
    param = next(model.parameters(), None)
    half = param is not None and str(param.dtype).removeprefix("torch.") in HALF
    if half and any(word in f for f in failures for word in NUMERIC):
        dtype = str(param.dtype).removeprefix("torch.")
        return f"Its weights are {dtype}: try --dtype float32, or report the model type"
    return "Report the model type if it should be read"


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnsupportedModelError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


