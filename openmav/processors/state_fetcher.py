"""``StateFetcher``: runs the capture step loop and yields :class:`ModelMeasurements` per token."""

from __future__ import annotations

from typing import Iterator

from ..api.measurements import ModelMeasurements
from ..capture.sampling import SamplingConfig
from ..capture.step_loop import CaptureConfig, generate_steps
from .state_processor import StateProcessor


class StateFetcher:
    """Generates tokens with one KV-cached forward each and measures every step.

    ``fetch_next(prompt, ...)`` is a generator of :class:`ModelMeasurements`; the
    shown token is the token actually chosen (greedy at temperature 0).
    """

    def __init__(self, backend, max_new_tokens: int = 50, aggregation: str = "l2", scale: str = "linear",
                 capture: CaptureConfig | None = None, stop_at_eos: bool = True):
        self.backend = backend
        self.max_new_tokens = int(max_new_tokens)
        self.processor = StateProcessor(aggregation=aggregation, scale=scale)
        self.capture = capture or CaptureConfig()
        self.stop_at_eos = stop_at_eos

    def records(self, prompt: str, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                min_p: float = 0.0, repetition_penalty: float = 1.0):
        """The raw :class:`~openmav.capture.records.StepRecord` stream behind :meth:`fetch_next`."""
        lm = self.backend.loaded
        sampling = SamplingConfig(temperature=temperature, top_k=top_k or 0, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, seed=self.backend.seed)
        return generate_steps(lm, prompt, self.max_new_tokens, sampling, self.capture, stop_at_eos=self.stop_at_eos)

    def fetch_next(self, prompt: str, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0, repetition_penalty: float = 1.0) -> Iterator[ModelMeasurements]:
        for record in self.records(prompt, temperature, top_k, top_p, min_p, repetition_penalty):
            yield self.processor.process(record)
