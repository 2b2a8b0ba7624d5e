"""Tiled inference: cut the input into overlapping tiles, upscale each, stitch the cores.

Peak memory of a forward pass grows with the input area (an EDSR 32x256 needs several GB for one
megapixel in one piece); tiles bound it. Each tile is a *core* (the pixels it is responsible
for) plus up to ``overlap`` input pixels of context on every side; only the core's part of the
tile's output is kept, so the context's border effects are cropped away.

At the image border a tile is not padded: its window is shifted inwards so it stays inside the
image. Whole-image inference sees the network's own zero padding at the image border, and so
does a tile whose window ends there; reflect-padding would change those pixels instead. Shifting
also keeps every window the same shape (engines that compile per input shape compile once).

Coordinates are named as in Real-ESRGAN's ``tile_process``: ``input_start_x`` .. ``input_end_x``
is the core, ``input_start_x_pad`` .. ``input_end_x_pad`` the window fed to the model, and
``output_*`` the same in output pixels (``*_tile`` relative to the tile's own output).

Assembly: the output is allocated once, in its final dtype (uint8 or uint16), and each tile's
core is written into its region as soon as the tile is done (``tile_process``). Nothing of
output size exists besides it: no float copy, no list of tiles, no concatenated rows. Callers
may pass the output array (or a view of one, e.g. the colour channels of an RGBA result).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

#: A window in, its whole output (``scale`` x the window, same dtype) out.
Upscale = Callable[[np.ndarray], np.ndarray]

#: Smallest tile side 'auto' picks (TileConfig refuses smaller explicit sizes too).
MIN_TILE = 16
#: 'auto' rounds the tile side down to a multiple of this (friendlier to SIMD/conv blocking).
TILE_MULTIPLE = 8


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels: the core and the window around it."""

    start: int  # core, inclusive
    end: int  # core, exclusive
    start_pad: int  # window, inclusive
    end_pad: int  # window, exclusive


@dataclass(frozen=True)
class TileWindow:
    """One tile: its core and window in input pixels, and where its core lands in the output."""

    input_start_x: int
    input_end_x: int
    input_start_y: int
    input_end_y: int
    input_start_x_pad: int
    input_end_x_pad: int
    input_start_y_pad: int
    input_end_y_pad: int
    scale: int

    @property
    def output_start_x(self) -> int:
        return self.input_start_x * self.scale

    @property
    def output_end_x(self) -> int:
        return self.input_end_x * self.scale

    @property
    def output_start_y(self) -> int:
        return self.input_start_y * self.scale

    @property
    def output_end_y(self) -> int:
        return self.input_end_y * self.scale

    @property
    def output_start_x_tile(self) -> int:
        """Where the core starts inside the tile's output."""
        return (self.input_start_x - self.input_start_x_pad) * self.scale

    @property
    def output_end_x_tile(self) -> int:
        return self.output_start_x_tile + (self.input_end_x - self.input_start_x) * self.scale

    @property
    def output_start_y_tile(self) -> int:
        return (self.input_start_y - self.input_start_y_pad) * self.scale

    @property
    def output_end_y_tile(self) -> int:
        return self.output_start_y_tile + (self.input_end_y - self.input_start_y) * self.scale


def axis_spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Tiles along one axis of ``length`` pixels: cores of about ``tile`` px, windows inside the axis.

    An axis that fits one window (``tile + 2*overlap``) is one span. Otherwise the cores are
    made equal (ceil(length / n) for n tiles) so no tile is spent on a sliver, and every window
    is ``core + 2*overlap`` long, shifted inwards at the ends.
    """
    if length <= tile + 2 * overlap:
        return [Span(0, length, 0, length)]
    count = math.ceil(length / tile)
    core = math.ceil(length / count)
    window = core + 2 * overlap
    spans = []
    for start in range(0, length, core):
        end = min(start + core, length)
        start_pad = max(0, min(start - overlap, length - window))
        spans.append(Span(start, end, start_pad, start_pad + window))
    return spans


def plan_tiles(height: int, width: int, tile: int, overlap: int, scale: int) -> list[TileWindow]:
    """All tiles of a ``height`` x ``width`` input, row by row."""
    return [
        TileWindow(
            input_start_x=sx.start, input_end_x=sx.end, input_start_y=sy.start, input_end_y=sy.end,
            input_start_x_pad=sx.start_pad, input_end_x_pad=sx.end_pad,
            input_start_y_pad=sy.start_pad, input_end_y_pad=sy.end_pad, scale=scale,
        )
        for sy in axis_spans(height, tile, overlap)
        for sx in axis_spans(width, tile, overlap)
    ]


#: (window pixels, the tile, the output region of its core) -> None: writes the core's pixels.
TileWriter = Callable[[np.ndarray, TileWindow, np.ndarray], None]


def whole_window(height: int, width: int, scale: int) -> TileWindow:
    """The one tile of a whole-image pass: core and window are the image."""
    return TileWindow(0, width, 0, height, 0, width, 0, height, scale)


def crop_input(img: np.ndarray, win: TileWindow) -> np.ndarray:
    """The window of ``img`` that the model sees for this tile (contiguous copy)."""
    return np.ascontiguousarray(img[win.input_start_y_pad : win.input_end_y_pad, win.input_start_x_pad : win.input_end_x_pad])


def core_slices(win: TileWindow) -> tuple[slice, slice]:
    """(rows, columns) of the core inside the tile's own output."""
    return slice(win.output_start_y_tile, win.output_end_y_tile), slice(win.output_start_x_tile, win.output_end_x_tile)


def crop_core(tile_output: np.ndarray, win: TileWindow) -> np.ndarray:
    """The tile's output without the overlap context: the core's pixels only (a view)."""
    return tile_output[core_slices(win)]


def output_region(output: np.ndarray, win: TileWindow) -> np.ndarray:
    """The part of ``output`` that this tile's core covers (a view, written in place)."""
    return output[win.output_start_y : win.output_end_y, win.output_start_x : win.output_end_x]


def stitch(output: np.ndarray, core: np.ndarray, win: TileWindow) -> np.ndarray:
    """Write a tile's core into ``output`` at its place; returns ``output``."""
    output_region(output, win)[...] = core
    return output


def new_output(img: np.ndarray, scale: int) -> np.ndarray:
    """The (uninitialised) result for ``img``: ``scale`` x its size, same channels and dtype."""
    height, width = img.shape[:2]
    return np.empty((height * scale, width * scale) + img.shape[2:], dtype=img.dtype)


def check_output(output: np.ndarray, img: np.ndarray, scale: int) -> np.ndarray:
    """``output`` if it can hold the result for ``img`` (shape and dtype); ValueError otherwise."""
    height, width = img.shape[:2]
    shape = (height * scale, width * scale) + img.shape[2:]
    if output.shape != shape or output.dtype != img.dtype:
        raise ValueError(f"output array is {output.shape} {output.dtype}, the result needs {shape} {img.dtype}")
    return output


def tile_process(img: np.ndarray, write_tile: TileWriter, windows: list[TileWindow], output: np.ndarray) -> np.ndarray:
    """Each window of ``img`` through ``write_tile``, which writes its core into ``output``; returns it."""
    for win in windows:
        write_tile(crop_input(img, win), win, output_region(output, win))
    return output


def upscale_tiled(
    img: np.ndarray, upscale: Upscale, scale: int, tile: int, overlap: int, out: Optional[np.ndarray] = None
) -> np.ndarray:
    """Upscale ``img`` tile by tile with ``upscale`` (one window in, ``scale`` x out) into ``out``.

    ``out`` (allocated here if None) is the preallocated result; each tile's core is copied into
    it as the tile is done. Without ``out``, one tile covering the whole image is just ``upscale(img)``.
    """
    height, width = img.shape[:2]
    windows = plan_tiles(height, width, tile, overlap, scale)
    if len(windows) == 1 and out is None:
        return upscale(img)
    out = new_output(img, scale) if out is None else check_output(out, img, scale)

    def write_tile(window: np.ndarray, win: TileWindow, region: np.ndarray) -> None:
        region[...] = crop_core(upscale(window), win)

    return tile_process(img, write_tile, windows, out)


#: A window whose widest layer (float32) holds more than this runs slower per pixel (the CPU's
#: caches): measured with OpenVINO, see cache_tile_size.
FAST_WINDOW_BYTES = 48 * 2**20
#: ... but tiles smaller than this lose more to their overlap than the cache gives back.
FAST_TILE_FLOOR = 192


def cache_tile_size(widest: float, overlap: int) -> int:
    """The tile side above which inference runs slower per pixel: its window's widest layer
    (``widest`` float32 elements per input pixel) fits FAST_WINDOW_BYTES; at least FAST_TILE_FLOOR.

    Measured on OpenVINO, 2 threads (input MP/s by window side): FSRCNN_x3 (widest 56) 9.0 at
    256, 7.5 at 384, 6.7 at 512, 5.1 at 984; the EDSR_x3-shaped stand-in (256) 0.047 at 96-192,
    0.036 at 256, 0.033 at 384; the default model (32) 2.5-2.7 up to 768 at aligned sizes.
    """
    window = math.isqrt(int(FAST_WINDOW_BYTES / max(4.0 * widest, 1.0)))
    tile = (window - 2 * overlap) // TILE_MULTIPLE * TILE_MULTIPLE
    return max(FAST_TILE_FLOOR, tile)


def auto_tile_size(bytes_per_input_pixel: float, max_memory_mb: int, overlap: int) -> int:
    """Largest tile side whose window (``tile + 2*overlap`` square) fits ``max_memory_mb``.

    window = floor(sqrt(max_memory_mb * 2**20 / bytes_per_input_pixel)); tile = window - 2*overlap,
    rounded down to a multiple of TILE_MULTIPLE and at least MIN_TILE.
    """
    window = math.isqrt(int(max_memory_mb * 2**20 / max(bytes_per_input_pixel, 1.0)))
    tile = (window - 2 * overlap) // TILE_MULTIPLE * TILE_MULTIPLE
    return max(MIN_TILE, tile)
