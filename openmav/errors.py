"""Errors that a user can act on.

Every error the command line can meet is an :class:`OpenMavError`; the CLI prints
its message as one line and exits non-zero, without a traceback.  The message says
what is wrong and, where there is one, what to do.
"""

from __future__ import annotations


class OpenMavError(Exception):
    """Base class: a problem the user can fix (bad input, missing model, no device)."""

    exit_code = 2


class ModelSourceError(OpenMavError):
    """The model named cannot be found or loaded."""


class UnsupportedModelError(OpenMavError):
    """The model's family has no adapter (see ``openmav.backends.adapters``)."""


class DeviceError(OpenMavError):
    """The device asked for is not available."""


class InputError(OpenMavError):
    """A prompt, index or option value is out of range or empty."""


class NonFiniteLogitsError(OpenMavError):
    """The model produced NaN or infinite logits."""

    exit_code = 3


class OutsideContextError(OpenMavError):
    """An object was used outside the context it is valid in (e.g. hooks after exit)."""
