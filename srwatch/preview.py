"""Before/after previews for the status page, made in the worker from the job's own pixels.

The page never reads a path from a request: the worker that rendered a file sends two small
JPEGs with its result, and the supervisor keeps the last few in memory. Both show the same
detail of the picture at the output's 1:1 scale: "after" is the model's output, "before" the
input enlarged with bicubic interpolation (what a plain resize would have given).
"""
from __future__ import annotations

import cv2
import numpy as np

from .messages import Preview

PREVIEW_SIDE = 320  # in pixels: the longest side of a preview
JPEG_QUALITY = 85


def make_preview(source: np.ndarray, output: np.ndarray, side: int = PREVIEW_SIDE) -> Preview:
    """The centre of `output` (at most side x side, 1:1) and the same region of `source`, enlarged."""
    out_h, out_w = output.shape[:2]
    src_h, src_w = source.shape[:2]
    w, h = min(side, out_w), min(side, out_h)
    x0, y0 = (out_w - w) // 2, (out_h - h) // 2
    after = _bgr8(output[y0 : y0 + h, x0 : x0 + w])
    fx, fy = src_w / out_w, src_h / out_h
    sx0, sy0 = int(x0 * fx), int(y0 * fy)
    sx1, sy1 = max(sx0 + 1, int(np.ceil((x0 + w) * fx))), max(sy0 + 1, int(np.ceil((y0 + h) * fy)))
    region = _bgr8(source[sy0:sy1, sx0:sx1])
    before = cv2.resize(region, (w, h), interpolation=cv2.INTER_CUBIC)
    return Preview(_jpeg(before), _jpeg(after), w, h)


def _bgr8(pixels: np.ndarray) -> np.ndarray:
    """8-bit BGR whatever the input's depth and channels (alpha dropped)."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    channels = pixels.shape[2]
    if channels == 1:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if channels == 2:
        return cv2.cvtColor(np.ascontiguousarray(pixels[..., 0]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(pixels[..., :3])


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode a preview")
    return buf.tobytes()
