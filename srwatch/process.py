"""The work of one job, as the worker pool calls it: input file in, encoded result out.

    processor = Processor(cfg, threads)   # once per worker process; loads the model
    rendered = processor.process(path)    # raises JobError subclasses only

Stages: read (size checks) -> cache lookup -> decode -> preshrink -> split alpha -> model ->
alpha upscale -> encode -> cache store. Writing the result to the outbox is the sink's job.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from . import __version__
from .cache import CachedResult, ResultCache, cache_key, settings_digest, sha256_bytes, sha256_file
from .config import Config
from .engine import Engine, load_engine
from .errors import CorruptImage, JobError, ModelError, ModelLoadError, OutputError
from .images import Decoded, Encoded, decode_image, encode_image, join_alpha, read_input, split_alpha, upscale_alpha

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


def preshrink(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, Optional[str]]:
    """Downscale (INTER_AREA) so the longer side is at most ``max_side``; 0 = off. Returns (pixels, note)."""
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return pixels, None
    factor = max_side / longest
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    shrunk = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return shrunk, f"input preshrunk from {width}x{height} to {size[0]}x{size[1]} (preshrink.max_side {max_side})"


class Processor:
    """Turns one input file into a Rendered result; holds the engine (and cache) of a worker."""

    def __init__(self, cfg: Config, threads: int) -> None:
        """Load the engine once (raises ModelLoadError) and open the cache if enabled."""
        self.cfg = cfg
        self.engine: Engine = load_engine(cfg.model, cfg.tile, threads)
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
            "engine": model.engine,
            "device": model.device,
            "output": self.cfg.output.model_dump(mode="json", exclude={"suffix"}),
            "tile": self.cfg.tile.model_dump(mode="json"),
            "preshrink": self.cfg.preshrink.model_dump(mode="json"),
        }

    def process(self, src: Path) -> Rendered:
        """Render one input file; raises JobError subclasses only."""
        try:
            data = read_input(src, self.cfg.limits)
        except OSError as exc:
            raise JobError(f"cannot read {src.name}: {exc.strerror or exc}") from None
        key = cache_key(sha256_bytes(data), self._model_digest, self._settings_digest) if self.cache else None
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return Rendered(hit.data, hit.ext, hit.input_size, hit.output_size, True, hit.notes)
        try:
            decoded = decode_image(data, self.cfg.limits)
        except JobError:
            raise
        except Exception as exc:  # a decoder failing in a way we did not foresee: the data is to blame
            raise CorruptImage(f"cannot decode: {type(exc).__name__}: {exc}") from exc
        rendered = self.render(decoded)
        if key is not None and self.cache is not None:
            self.cache.put(key, CachedResult(rendered.data, rendered.ext, rendered.input_size, rendered.output_size, rendered.notes))
        return rendered

    def render(self, decoded: Decoded) -> Rendered:
        """Model and encode decoded pixels (no cache)."""
        result, preshrink_note = self.upscale(decoded.pixels)
        encoded = self.encode(result, decoded)
        notes = [*decoded.notes, *([preshrink_note] if preshrink_note else []), *encoded.notes]
        return Rendered(
            data=encoded.data,
            ext=encoded.ext,
            input_size=decoded.size,
            output_size=(result.shape[1], result.shape[0]),
            cached=False,
            notes=tuple(notes),
        )

    def upscale(self, pixels: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
        """Preshrink, colour through the model, alpha (if any) with bicubic; raises ModelError.

        Returns (upscaled pixels, the preshrink note or None).
        """
        try:
            pixels, note = preshrink(pixels, self.cfg.preshrink.max_side)
            colour, alpha = split_alpha(pixels)
            upscaled = self.engine.upscale(colour)
            alpha_up = upscale_alpha(alpha, self.scale) if alpha is not None else None
            return join_alpha(upscaled, alpha_up), note
        except JobError:
            raise
        except Exception as exc:  # MemoryError for a huge output, a runtime's own exception type
            raise ModelError(f"upscaling failed: {type(exc).__name__}: {exc}") from exc

    def encode(self, pixels: np.ndarray, decoded: Decoded) -> Encoded:
        """encode_image, with any failure as OutputError."""
        try:
            return encode_image(pixels, decoded, self.cfg.output)
        except JobError:
            raise
        except Exception as exc:
            raise OutputError(f"cannot encode the result: {type(exc).__name__}: {exc}") from exc
