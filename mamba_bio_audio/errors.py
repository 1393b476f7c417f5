"""The toolkit's own error types. Each message names what it is about (the file and record, or the training step)
and what is wrong; the `mba` command prints it as one line."""
from __future__ import annotations


class MbaError(Exception):
    """Base of the toolkit's errors."""


class TrainingDiverged(MbaError, RuntimeError):
    """A training step produced a non-finite loss or gradient."""


class InputError(MbaError, ValueError):
    """A file or record the toolkit was given is unreadable or malformed (a ValueError too)."""
