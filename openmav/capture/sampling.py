"""Choosing the next token: greedy at temperature 0, else sampled with the standard processors.

The order is transformers' own: repetition penalty, then temperature, top-k, top-p
and min-p, then a draw from the softmax of what is left.  The processors are
transformers' classes, so a run matches ``model.generate`` with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> "SamplingConfig":
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise InputError(f"min-p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition penalty must be > 0 (1 turns it off), got {self.repetition_penalty}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Applies :class:`SamplingConfig` to raw logits; owns the seeded generator."""

    def __init__(self, config: SamplingConfig, device: torch.device):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.config = config.validate()
        procs = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if not config.greedy:
            if config.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k > 0:
                procs.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                procs.append(TopPLogitsWarper(config.top_p))
            if config.min_p > 0:
                procs.append(MinPLogitsWarper(config.min_p))
        self.processors = procs
        # greedy over the raw logits: the argmax, which the step loop may take from its own top-k
        self.plain_greedy = config.greedy and not procs
        self.generator = None
        if config.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(int(config.seed))

    def choose(self, logits: torch.Tensor, input_ids: torch.Tensor) -> int:
        """One token id from ``logits [V]`` given the ids so far ``[1, seq]``."""
        scores = logits.view(1, -1)
        if self.processors:
            scores = self.processors(input_ids, scores.clone())
        if self.config.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores.float(), -1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
