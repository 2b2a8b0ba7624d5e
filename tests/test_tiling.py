"""Tiling: the plan's arithmetic, and tiled vs whole-image inference with real models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import psnr, require, set5
from srwatch import tiling
from srwatch.config import ModelConfig, TileConfig
from srwatch.engine import load_engine


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (101, 32, 0), (48, 32, 8), (300, 64, 12), (33, 16, 4)])
def test_axis_spans_partition_the_axis(length: int, tile: int, overlap: int) -> None:
    spans = tiling.axis_spans(length, tile, overlap)
    # Cores cover the axis exactly once, in order.
    assert spans[0].start == 0 and spans[-1].end == length
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    windows = {s.end_pad - s.start_pad for s in spans}
    assert len(windows) == 1  # one window size: engines compile once per shape
    for s in spans:
        assert 0 <= s.start_pad <= s.start < s.end <= s.end_pad <= length
        assert s.end - s.start <= tile or len(spans) == 1
        # Context on each side: the full overlap, or all there is up to the image border.
        assert s.start - s.start_pad >= min(overlap, s.start)
        assert s.end_pad - s.end >= min(overlap, length - s.end)


def test_small_axis_is_one_span() -> None:
    assert tiling.axis_spans(40, 32, 8) == [tiling.Span(0, 40, 0, 40)]


def test_named_coordinates() -> None:
    (first, second) = tiling.plan_tiles(10, 100, 40, 5, scale=3)[:2]
    assert (first.input_start_x, first.input_end_x) == (0, 34)
    assert (first.input_start_x_pad, first.input_end_x_pad) == (0, 44)
    assert (second.input_start_x_pad, second.input_end_x_pad) == (29, 73)
    assert (second.output_start_x, second.output_end_x) == (102, 204)
    assert (second.output_start_x_tile, second.output_end_x_tile) == (15, 117)
    assert (first.input_start_y_pad, first.input_end_y_pad, first.output_end_y) == (0, 10, 30)


def test_tiled_nearest_neighbour_equals_whole() -> None:
    """A purely local 'model' must come out identical, whatever the tiling."""
    img = np.random.default_rng(1).integers(0, 65536, (70, 95, 3), dtype=np.uint16)

    def nearest(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(x, 3, axis=0), 3, axis=1)

    assert np.array_equal(tiling.upscale_tiled(img, nearest, 3, 16, 4), nearest(img))


def test_auto_tile_size_formula() -> None:
    # 4 MiB at 1024 bytes per pixel: a 64x64 window; minus 2 x 8 overlap = 48.
    assert tiling.auto_tile_size(1024.0, 4, 8) == 48
    assert tiling.auto_tile_size(1e9, 16, 8) == tiling.MIN_TILE


def seam_band(shape: tuple[int, int], windows: list[tiling.TileWindow], width: int) -> np.ndarray:
    """Mask of output pixels within ``width`` of a tile edge (image borders excluded)."""
    band = np.zeros(shape, bool)
    for x in {w.output_start_x for w in windows} - {0}:
        band[:, max(0, x - width) : x + width] = True
    for y in {w.output_start_y for w in windows} - {0}:
        band[max(0, y - width) : y + width, :] = True
    return band


@pytest.mark.parametrize("name", ["FSRCNN_x3.pb", "ESPCN_x3.pb", "LapSRN_x4.pb"])
def test_tiled_matches_whole_without_seams(models_dir: Path, name: str) -> None:
    path = require(models_dir / name)
    img = np.ascontiguousarray(set5("bird")[:112, :100])
    whole = load_engine(ModelConfig(path=path), TileConfig(size="off"), 2).upscale(img)
    tiled_engine = load_engine(ModelConfig(path=path), TileConfig(size=40, overlap=12), 2)
    tiled = tiled_engine.upscale(img)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) >= 45.0

    scale = tiled_engine.scale
    windows = tiling.plan_tiles(img.shape[0], img.shape[1], 40, 12, scale)
    assert len(windows) > 1
    band = seam_band(whole.shape[:2], windows, 2 * scale)
    diff = np.abs(tiled.astype(np.int32) - whole).max(axis=2)
    assert diff[band].mean() <= 2 * diff[~band].mean() + 0.02

    # The check can see seams: without overlap they are there.
    seamy = tiling.upscale_tiled(img, tiled_engine.upscale_whole, scale, 40, 0)
    seamy_diff = np.abs(seamy.astype(np.int32) - whole).max(axis=2)
    assert seamy_diff[band].mean() > 2 * seamy_diff[~band].mean() + 0.02
