"""Exception hierarchy. Every per-file failure maps to one quarantine reason code.

Two families, on purpose:

- `JobError`: the file is to blame (its content, its kind, its name). The file goes to
  quarantine with the class's `reason`.
- `StorageError`: srwatch's own folders are to blame (full, read-only, I/O errors, no
  permission). The file is not at fault: it stays claimed, that step pauses with back-off and
  resumes by itself when the condition clears. It never reaches quarantine.
"""
from __future__ import annotations

import errno
from typing import Optional


class SrwatchError(Exception):
    """Base of every error srwatch raises on purpose."""

    reason = "error"


class ConfigError(SrwatchError):
    """The configuration is invalid; the daemon must not start (exit status 2)."""

    reason = "config"


class ModelLoadError(ConfigError):
    """The model file cannot be read, loaded, or does not upscale by its scale."""

    reason = "model_load"


class StorageError(SrwatchError):
    """One of srwatch's own folders cannot take a write now (ENOSPC, EROFS, EDQUOT, EIO, EACCES).

    Not the file's fault: the job stays claimed and the step is retried with back-off.
    """

    reason = "storage"

    def __init__(self, message: str, errno_: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno_


#: errno values that say "the folder cannot take this now", not "this file is bad".
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM})


def is_environmental(exc: BaseException) -> bool:
    """True for an OSError caused by the folder (full, read-only, ...), not by the file."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


class JobError(SrwatchError):
    """A single input cannot be processed; it goes to quarantine with `reason`."""

    reason = "error"


class NotAnImage(JobError):
    """The content is not an image format srwatch reads (whatever the extension says)."""

    reason = "not_image"


class EmptyFile(JobError):
    """The file has zero bytes."""

    reason = "empty"


class CorruptImage(JobError):
    """The header looks like an image but the data cannot be decoded (corrupt or truncated)."""

    reason = "corrupt"


class TooManyPixels(JobError):
    """The input or the output would have more pixels than limits.max_pixels / max_output_pixels."""

    reason = "too_large"


class UnsupportedImage(JobError):
    """A real image of a kind srwatch does not handle (animation, multi-page, odd mode)."""

    reason = "unsupported"


class NotAFile(JobError):
    """The inbox entry is not a regular file (FIFO, socket, device): it is never opened."""

    reason = "not_a_file"


class LinkRefused(JobError):
    """The inbox entry is a symbolic link: srwatch never opens, reads or follows it."""

    reason = "link"


class ModelError(JobError):
    """The model failed on this input."""

    reason = "model_error"


class OutputError(JobError):
    """The result could not be encoded or written (e.g. a name the format cannot hold)."""

    reason = "output_error"


class JobTimeout(JobError):
    """The job ran longer than pool.job_timeout; its worker was killed."""

    reason = "timeout"


class WorkerCrashed(JobError):
    """The worker process died while holding this file, on every attempt."""

    reason = "worker_crash"


def _job_error_classes(base: type[JobError] = JobError) -> list[type[JobError]]:
    found: list[type[JobError]] = [base]
    for sub in base.__subclasses__():
        found.extend(_job_error_classes(sub))
    return found


#: Every reason code a quarantine record can carry, derived from the classes (docs and tests).
REASON_CODES: tuple[str, ...] = tuple(sorted({cls.reason for cls in _job_error_classes()}))
