"""The work of one job, as the worker pool calls it: input file in, encoded result out.

    processor = Processor(cfg, threads)   # once per worker process; loads the model
    rendered = processor.process(path, max_bytes=claimed_size)
    # raises JobError subclasses (the file is to blame) or StorageError (the folder is)

Stages: read (link/file-type/size checks) -> cache lookup -> header (input and output pixel
limits, before anything is decoded) -> decode -> plan the output (format limits, before
inference) -> preshrink -> model and alpha, written into one preallocated result -> encode ->
cache store. Writing the result to the outbox is the sink's job.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from . import __version__
from .cache import CachedResult, ResultCache, cache_key, settings_digest, sha256_bytes, sha256_file
from .config import Config, LimitsConfig, resolve_precision
from .engine import Engine, load_engine
from .errors import (
    CorruptImage, JobError, ModelError, ModelLoadError, OutputError, StorageError, TooManyPixels, is_environmental,
)
from .images import (
    Decoded, Encoded, ImageInfo, OutputPlan, decode_image, encode_image, plan_output, read_header,
    read_input, split_alpha, upscale_alpha,
)
from .preview import Preview, make_preview

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendered:
    """A finished job: the encoded output file and what happened on the way."""

    data: bytes  # the encoded output file
    ext: str  # e.g. '.png'
    input_size: tuple[int, int]  # (width, height) as decoded, EXIF orientation applied
    output_size: tuple[int, int]  # (width, height)
    cached: bool
    notes: tuple[str, ...]  # e.g. 'RGBA output written as PNG instead of JPEG ...'
    # Seconds per stage: read, decode, infer, encode (a cache hit: read and cache).
    stages: dict[str, float] = field(default_factory=dict)
    input_bytes: int = 0
    preview: Optional[Preview] = None  # for the status page (metrics.page), None otherwise


def preshrink_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) after preshrink: the longer side at most ``max_side`` (0 = off)."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return width, height
    factor = max_side / longest
    return max(1, round(width * factor)), max(1, round(height * factor))


def preshrink(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, Optional[str]]:
    """Downscale (INTER_AREA) so the longer side is at most ``max_side``; 0 = off. Returns (pixels, note)."""
    height, width = pixels.shape[:2]
    size = preshrink_size(width, height, max_side)
    if size == (width, height):
        return pixels, None
    shrunk = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return shrunk, f"input preshrunk from {width}x{height} to {size[0]}x{size[1]} (preshrink.max_side {max_side})"


class Processor:
    """Turns one input file into a Rendered result; holds the engine (and cache) of a worker."""

    def __init__(self, cfg: Config, threads: int, engine: Optional[Engine] = None) -> None:
        """Load the engine once (raises ModelLoadError), or share `engine`; open the cache if enabled."""
        self.cfg = cfg
        self.threads = threads
        self.previews = bool(cfg.metrics.listen and cfg.metrics.page)  # thumbnails for the status page
        self.engine: Engine = engine if engine is not None else load_engine(cfg.model, cfg.tile, threads)
        self.cache: Optional[ResultCache] = None
        self._model_digest = ""
        self._settings_digest = ""
        if cfg.cache.enabled:
            try:
                self._model_digest = sha256_file(self.engine.info.path)
            except OSError as exc:
                raise ModelLoadError(f"model.path: cannot read {self.engine.info.path}: {exc.strerror}") from None
            self._settings_digest = settings_digest(self.cache_settings())
            self.cache = ResultCache(cfg.cache_dir, cfg.cache.max_mb)

    @property
    def scale(self) -> int:
        """The model's upscaling factor."""
        return self.engine.scale

    def cache_settings(self) -> dict[str, Any]:
        """Everything besides the input and the model file that can change the output bytes."""
        model = self.cfg.model
        return {
            "srwatch": __version__,
            "algorithm": self.engine.info.algorithm,
            "scale": self.engine.scale,
            "engine": self.engine.name,
            "precision": resolve_precision(model),
            "device": model.device,
            "output": self.cfg.output.model_dump(mode="json", exclude={"suffix"}),
            "tile": self.cfg.tile.model_dump(mode="json"),
            "preshrink": self.cfg.preshrink.model_dump(mode="json"),
        }

    def process(self, src: Path, max_bytes: Optional[int] = None) -> Rendered:
        """Render one input file, reading at most ``max_bytes`` (its size when claimed).

        Raises JobError subclasses when the file is to blame, StorageError when reading it
        failed for a reason of the folder's (EIO, EACCES, ...; errors.is_environmental).
        """
        clock = _Stages()
        data = self.read(src, max_bytes)
        clock.lap("read")
        return self.process_bytes(data, clock)

    def process_bytes(self, data: bytes, clock: Optional["_Stages"] = None) -> Rendered:
        """Render an input file's bytes (read by the caller: a Ray actor gets them from the supervisor).

        The one path for local workers and Ray actors: cache, header limits, decode, render.
        Raises JobError subclasses when the data is to blame.
        """
        clock = clock or _Stages()
        input_bytes = len(data)
        key = cache_key(sha256_bytes(data), self._model_digest, self._settings_digest) if self.cache else None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            clock.lap("cache")
            if hit is not None:
                return Rendered(hit.data, hit.ext, hit.input_size, hit.output_size, True, hit.notes, clock.stages, input_bytes)
        self.check_output_size(read_header(data, self.cfg.limits))
        try:
            decoded = decode_image(data, self.cfg.limits)
        except JobError:
            raise
        except Exception as exc:  # a decoder failing in a way we did not foresee: the data is to blame
            raise CorruptImage(f"cannot decode: {type(exc).__name__}: {exc}") from exc
        del data
        clock.lap("decode")
        rendered = self.render(decoded, clock)
        if key is not None and self.cache is not None:
            self.cache.put(key, CachedResult(rendered.data, rendered.ext, rendered.input_size, rendered.output_size, rendered.notes))
            clock.lap("cache")
        return replace(rendered, stages=clock.stages, input_bytes=input_bytes)

    def read(self, src: Path, max_bytes: Optional[int] = None) -> bytes:
        """read_input, with an OSError as StorageError (environmental) or JobError (the file's)."""
        return read_claimed(src, self.cfg.limits, max_bytes)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the result for an input of width x height as seen: preshrink, then scale."""
        width, height = preshrink_size(width, height, self.cfg.preshrink.max_side)
        return width * self.scale, height * self.scale

    def check_output_size(self, info: ImageInfo) -> tuple[int, int]:
        """The planned output size from the header; TooManyPixels above limits.max_output_pixels."""
        width, height = self.output_size(*info.oriented_size)
        limit = self.cfg.limits.max_output_pixels
        if width * height > limit:
            shrunk = " after preshrink" if self.cfg.preshrink.max_side else ""
            raise TooManyPixels(
                f"the output would be {width}x{height} = {width * height} pixels (x{self.scale}{shrunk} of "
                f"{info.oriented_size[0]}x{info.oriented_size[1]}), more than limits.max_output_pixels ({limit})"
            )
        return width, height

    def render(self, decoded: Decoded, clock: Optional["_Stages"] = None) -> Rendered:
        """Plan the output, model and encode decoded pixels (no cache)."""
        clock = clock or _Stages()
        height, width = decoded.pixels.shape[:2]
        plan = self.plan(decoded, self.output_size(width, height))
        result, preshrink_note = self.upscale(decoded.pixels)
        clock.lap("infer")
        encoded = self.encode(result, decoded, plan)
        clock.lap("encode")
        preview = None
        if self.previews:
            try:
                preview = make_preview(decoded.pixels, result)
            except Exception as exc:  # noqa: BLE001 - a preview is a nicety; the job goes on without it
                log.debug("no preview: %s", exc)
            clock.lap("preview")
        notes = [*decoded.notes, *([preshrink_note] if preshrink_note else []), *encoded.notes]
        return Rendered(
            data=encoded.data,
            ext=encoded.ext,
            input_size=decoded.size,
            output_size=(result.shape[1], result.shape[0]),
            cached=False,
            notes=tuple(notes),
            stages=clock.stages,
            preview=preview,
        )

    def plan(self, decoded: Decoded, size: tuple[int, int]) -> OutputPlan:
        """plan_output (format and metadata limits, decided before inference), as OutputError if it fails."""
        try:
            return plan_output(decoded, size, self.cfg.output)
        except JobError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot plan the output: {type(exc).__name__}: {exc}") from exc

    def upscale(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
        """Preshrink, colour through the model, alpha (if any) with bicubic; raises ModelError.

        The result is allocated once, in its final dtype; the engine writes the colour into it
        tile by tile and the alpha goes into its last channel (no full-size joins or copies).
        Returns (upscaled pixels, the preshrink note or None).
        """
        try:
            pixels, note = preshrink(pixels, self.cfg.preshrink.max_side)
            colour, alpha = split_alpha(pixels)
            height, width = pixels.shape[:2]
            result = np.empty((height * self.scale, width * self.scale) + pixels.shape[2:], dtype=pixels.dtype)
            if alpha is None:
                self.engine.upscale(colour, out=result)
                return result, note
            self.engine.upscale(colour, out=result[..., 0] if pixels.shape[2] == 2 else result[..., :3])
            result[..., -1] = upscale_alpha(alpha, self.scale)
            return result, note
        except JobError:
            raise
        except Exception as exc:  # MemoryError for a huge output, a runtime's own exception type
            raise ModelError(f"upscaling failed: {type(exc).__name__}: {exc}") from exc

    def encode(self, pixels: np.ndarray, decoded: Decoded, plan: Optional[OutputPlan] = None) -> Encoded:
        """encode_image, with any failure as OutputError."""
        try:
            return encode_image(pixels, decoded, self.cfg.output, plan)
        except JobError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot encode the result: {type(exc).__name__}: {exc}") from exc


def read_claimed(src: Path, limits: LimitsConfig, max_bytes: Optional[int] = None) -> bytes:
    """A claimed input's bytes (read_input: no links, regular files only, at most ``max_bytes``).

    An OSError becomes StorageError (environmental: the folder is to blame) or JobError (the
    file's). Local workers read through Processor.read; the Ray supervisor calls it directly.
    """
    try:
        return read_input(src, limits, max_bytes)
    except OSError as exc:
        message = f"cannot read {src.name}: {exc.strerror or exc}"
        if is_environmental(exc):
            raise StorageError(message, exc.errno) from None
        raise JobError(message) from None


class _Stages:
    """Seconds spent per stage of one job, measured lap by lap (a stage seen twice adds up)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - self._last)
        self._last = now
