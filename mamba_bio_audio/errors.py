"""The toolkit's own error types. Each message names what it is about (the file and record, or the training step)
and what is wrong; the `mba` command prints it as one line."""
from __future__ import annotations


class MbaError(Exception):
    """Base of the toolkit's errors."""


class TrainingDiverged(MbaError, RuntimeError):
    """A training step produced a non-finite loss or gradient."""


class TrainingOutOfMemory(MbaError, RuntimeError):
    """A training step needed more accelerator memory than there is. The message names the step, the shape of the
    batch and where the last checkpoint is; nothing saved before the step is lost."""


class TrainingInterrupted(MbaError, RuntimeError):
    """Training was stopped by SIGTERM or Ctrl+C after saving its state; the message names the checkpoint to resume
    from."""


class InputError(MbaError, ValueError):
    """A file or record the toolkit was given is unreadable or malformed (a ValueError too)."""


class DownloadError(MbaError, OSError):
    """A download failed or stopped short (the server, the network); what arrived is kept for the next run to resume
    from."""


class GenerationDiverged(MbaError, RuntimeError):
    """Generation produced non-finite logits or a non-finite recurrent state (a diverging model, an overflow in low
    precision), and was stopped rather than go on writing garbage. `position`: the first position whose logits were
    not finite, else the position at which the state check found the state so; `rows`: the affected rows of the
    batch (sequences or clips)."""

    def __init__(self, message: str, position: int | None = None, rows: list[int] | tuple[int, ...] = ()):
        super().__init__(message)
        self.position = position
        self.rows = list(rows)
