"""The capture engine: a KV-cached step loop whose hooks fill plain :class:`StepRecord` s."""

from .records import StepRecord
from .sampling import SamplingConfig
from .step_loop import CaptureConfig, generate_steps, logit_lens
from .tokens import TokenText

__all__ = ["StepRecord", "SamplingConfig", "CaptureConfig", "generate_steps", "logit_lens", "TokenText"]
