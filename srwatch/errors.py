"""Exception hierarchy. Every per-file failure maps to one quarantine reason code."""
from __future__ import annotations


class SrwatchError(Exception):
    """Base of every error srwatch raises on purpose."""

    reason = "error"


class ConfigError(SrwatchError):
    """The configuration is invalid; the daemon must not start (exit status 2)."""

    reason = "config"


class ModelLoadError(ConfigError):
    """The model file cannot be read, loaded, or does not upscale by its scale."""

    reason = "model_load"


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
    """The header announces more pixels than limits.max_pixels (decompression bomb guard)."""

    reason = "too_large"


class UnsupportedImage(JobError):
    """A real image of a kind srwatch does not handle (animation, multi-page, odd mode)."""

    reason = "unsupported"


class ModelError(JobError):
    """The model failed on this input."""

    reason = "model_error"


class OutputError(JobError):
    """The result could not be encoded or written."""

    reason = "output_error"


class JobTimeout(JobError):
    """The job ran longer than pool.job_timeout; its worker was killed."""

    reason = "timeout"


class WorkerCrashed(JobError):
    """The worker process died while holding this file, on every attempt."""

    reason = "worker_crash"


#: Every reason code a quarantine record can carry, for docs and tests.
REASON_CODES: tuple[str, ...] = tuple(
    sorted(
        {
            cls.reason
            for cls in (
                NotAnImage,
                EmptyFile,
                CorruptImage,
                TooManyPixels,
                UnsupportedImage,
                ModelError,
                OutputError,
                JobTimeout,
                WorkerCrashed,
            )
        }
        | {"error"}
    )
)
