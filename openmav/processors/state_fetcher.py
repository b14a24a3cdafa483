"""``StateFetcher``: runs the capture step loop and yields :class:`ModelMeasurements` per token."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from ..api.measurements import ModelMeasurements
from ..capture.sampling import SamplingConfig
from ..capture.step_loop import CaptureConfig, generate_steps
from ..errors import InputError
from ..rules import MAX_NEW_TOKENS, Flag, check_sampling, check_text, shown
from .state_processor import StateProcessor

# steps per logit-lens product for the raw record stream (records arrive this many at a time, in order,
# each with its lens); the live view (``fetch_next``) keeps the configuration's own (1: every token at once)
RECORDS_LENS_BATCH = 8


class StateFetcher:
    """Generates tokens with one KV-cached forward each and measures every step.

    ``fetch_next(prompt, ...)`` is a generator of :class:`ModelMeasurements`; the
    shown token is the token actually chosen (greedy at temperature 0).  The backend
    needs no ``initialize()`` first: the model loads on the first fetch.

    >>> backend = TransformersBackend("smollm2-135m", device="cpu")          # doctest: +SKIP
    >>> for m in StateFetcher(backend, max_new_tokens=5).fetch_next("Hi"):  # doctest: +SKIP
    ...     print(m.predicted_char, m.top_probs[0])
    """

    def __init__(self, backend, max_new_tokens: int = 50, aggregation: str = "l2", scale: str = "linear",
                 capture: CaptureConfig | None = None, stop_at_eos: bool = True):
        MAX_NEW_TOKENS.check("max_new_tokens", max_new_tokens)
        Flag().check("stop_at_eos", stop_at_eos)
        if capture is not None and not isinstance(capture, CaptureConfig):
            raise InputError(f"capture must be a CaptureConfig (or None for every capture), got {shown(capture)}")
        self.backend = backend
        self.max_new_tokens = int(max_new_tokens)
        self.processor = StateProcessor(aggregation=aggregation, scale=scale)
        self.capture = capture or CaptureConfig()
        self._default_capture = capture is None
        self.stop_at_eos = stop_at_eos

    def _loaded(self):
        initialize = getattr(self.backend, "initialize", None)
        return initialize() if callable(initialize) else self.backend.loaded

    def records(self, prompt: str, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                min_p: float = 0.0, repetition_penalty: float = 1.0, lens_batch: int | None = None):
        """The raw :class:`~openmav.capture.records.StepRecord` stream behind :meth:`fetch_next`.

        ``lens_batch``: steps per logit-lens product (records then arrive that many at a time, in
        order, each with its lens); by default the capture configuration's own, or
        :data:`RECORDS_LENS_BATCH` when the fetcher was made without one.

        Bad values (a prompt that is not valid UTF-8 or is blank, NaN or out-of-range
        sampling settings) are an :class:`~openmav.errors.InputError` here, before the
        model loads.
        """
        check_text("the prompt", prompt, allow_empty=False)
        seed = getattr(self.backend, "seed", None)
        check_sampling(temperature, top_k or 0, top_p, min_p, repetition_penalty, seed)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k or 0, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, seed=seed)
        lm = self._loaded()
        capture = self.capture
        if lens_batch is None and self._default_capture:
            lens_batch = RECORDS_LENS_BATCH
        if lens_batch is not None and lens_batch != capture.lens_batch:
            capture = replace(capture, lens_batch=lens_batch)
        return generate_steps(lm, prompt, self.max_new_tokens, sampling, capture, stop_at_eos=self.stop_at_eos)

    def fetch_next(self, prompt: str, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0, repetition_penalty: float = 1.0) -> Iterator[ModelMeasurements]:
        """Generate from ``prompt``, yielding each token's :class:`ModelMeasurements` as it comes."""
        # each token is shown as it comes: the configuration's own lens batch (1 unless asked otherwise)
        for record in self.records(prompt, temperature, top_k, top_p, min_p, repetition_penalty,
                                   lens_batch=self.capture.lens_batch):
            yield self.processor.process(record)
