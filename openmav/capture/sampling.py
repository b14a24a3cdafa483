"""Choosing the next token: greedy at temperature 0, else sampled with the standard processors.

The order is transformers' own: repetition penalty, then temperature, top-k, top-p
and min-p, then a draw from the softmax of what is left.  The processors are
transformers' classes, so a run matches ``model.generate`` with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..rules import check_sampling


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen; checked when made, by the command line's rules
    (:data:`openmav.rules.SAMPLING`): finite numbers in range, whole numbers where whole, so a bad
    value is an :class:`~openmav.errors.InputError` naming the field before anything runs."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingConfig":
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if getattr(self, name) is None:
                raise InputError(f"{name} must be a number, got None")
        check_sampling(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty, self.seed)
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
