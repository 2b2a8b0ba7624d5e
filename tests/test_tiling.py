"""Tiling: the plan's arithmetic, and tiled vs whole-image inference with real models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import build_onnx_model, psnr, require, set5
from srwatch import tiling
from srwatch.config import ModelConfig, TileConfig
from srwatch.engine import Engine, load_engine

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"


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
    whole = load_engine(ModelConfig(engine="opencv", path=path), TileConfig(size="off"), 2).upscale(img)
    tiled_engine = load_engine(ModelConfig(engine="opencv", path=path), TileConfig(size=40, overlap=12), 2)
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


# --- assembly into one preallocated result --------------------------------------------------------


def nearest3(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(x, 3, axis=0), 3, axis=1)


def test_upscale_tiled_writes_into_the_given_array() -> None:
    img = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgba = np.zeros((37 * 3, 53 * 3, 4), np.uint8)
    colour = rgba[..., :3]  # a strided view: the colour channels of an RGBA result
    assert tiling.upscale_tiled(img, nearest3, 3, 16, 4, out=colour) is colour
    assert np.array_equal(rgba[..., :3], nearest3(img)) and not rgba[..., 3].any()
    one = np.empty((37 * 3, 53 * 3, 3), np.uint8)  # one tile covers it: still written into `out`
    assert tiling.upscale_tiled(img, nearest3, 3, 64, 4, out=one) is one
    assert np.array_equal(one, nearest3(img))
    for wrong in (np.empty((37 * 3, 53 * 3, 3), np.uint16), np.empty((37 * 3, 53 * 3), np.uint8)):
        with pytest.raises(ValueError, match="output array"):
            tiling.upscale_tiled(img, nearest3, 3, 16, 4, out=wrong)


def test_tile_process_writes_every_output_pixel_once() -> None:
    height, width, scale = 70, 95, 2
    windows = tiling.plan_tiles(height, width, 16, 4, scale)
    out = np.zeros((height * scale, width * scale), np.int32)

    def count(window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        assert window.shape == (win.input_end_y_pad - win.input_start_y_pad, win.input_end_x_pad - win.input_start_x_pad)
        region += 1

    tiling.tile_process(np.zeros((height, width), np.uint8), count, windows, out)
    assert (out == 1).all()


def test_whole_window_is_the_image() -> None:
    win = tiling.whole_window(10, 20, 3)
    assert tiling.core_slices(win) == (slice(0, 30), slice(0, 60))
    assert (win.output_end_x, win.output_end_y) == (60, 30)


def tiny_models(tmp_path: Path) -> dict[str, Path]:
    return {
        "luma": build_onnx_model(tmp_path / "luma_x3.onnx", "y", 3, {"srwatch.algorithm": "fsrcnn"}),
        "edsr": build_onnx_model(tmp_path / "edsr_x2.onnx", "edsr", 2, {"srwatch.algorithm": "edsr"}),
    }


def staged_inputs() -> dict[str, np.ndarray]:
    bgr = np.ascontiguousarray(set5("bird")[:70, :90])
    gray = np.ascontiguousarray(bgr[..., 1])
    return {"bgr8": bgr, "gray8": gray, "bgr16": bgr.astype(np.uint16) * 257 + 5, "gray16": gray.astype(np.uint16) * 257}


@pytest.mark.parametrize("kind", ["luma", "edsr", "shipped", "pb16"])
def test_core_only_stages_equal_cropping_the_whole_tile(tmp_path: Path, models_dir: Path, kind: str) -> None:
    """The tiled path post-processes only each core, in place; the pixels are exactly those of the
    whole tile's output, cropped (the old assembly), for 8/16-bit, colour and gray, luma and EDSR."""
    if kind == "shipped":
        path = require(SHIPPED_MODEL)
    elif kind == "pb16":
        path = require(models_dir / "ESPCN_x3.pb")  # 16-bit input takes the stages, not dnn_superres
    else:
        path = tiny_models(tmp_path)[kind]
    tile_cfg = TileConfig(size=24, overlap=6)
    engine = load_engine(ModelConfig(engine="opencv", path=path), tile_cfg, 2)
    for name, img in staged_inputs().items():
        if kind == "pb16" and img.dtype != np.uint16:
            continue
        out = engine.upscale(img)
        old = tiling.upscale_tiled(img, lambda w: Engine.upscale_whole(engine, w), engine.scale, 24, 6)
        assert out.dtype == img.dtype and out.shape == old.shape, name
        assert np.array_equal(out, old), f"{kind} {name}"


def rss_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def test_tiled_assembly_holds_nothing_of_output_size_but_the_result(tmp_path: Path) -> None:
    """Peak RSS growth of a tiled upscale: the uint8 result plus small per-tile buffers (measured:
    the result and 0.1 MB). Neither a float32 plane of output size (4 bytes per pixel) nor a
    concatenated copy of the result fits under the bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("peak RSS cannot be reset here")
    for kind, path in tiny_models(tmp_path).items():
        engine = load_engine(ModelConfig(engine="opencv", path=path), TileConfig(size=64, overlap=8), 1)
        img = np.ascontiguousarray(np.tile(set5("bird"), (4, 3, 1))[:1000, :700])
        engine.upscale(img[:200, :200])  # the tile shape's buffers exist before measuring
        before = rss_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = engine.upscale(img)
        growth = rss_status("VmHWM") - before
        result = out.nbytes
        assert growth <= result + out.shape[0] * out.shape[1] + 4 * 2**20, (
            f"{kind}: peak grew {growth / 2**20:.0f} MB for a {result / 2**20:.0f} MB result"
        )
        del out


def test_cache_tile_size_keeps_the_widest_layer_of_a_window_within_the_fast_budget() -> None:
    # 48 MiB of float32 over 56 elements per pixel: a 474-px window; minus 2 x 12 = 450 -> 448.
    assert tiling.cache_tile_size(56.0, 12) == 448
    assert tiling.cache_tile_size(32.0, 12) == 600
    # EDSR_x3's 256 filters would give 197 -> 192; wider layers stop at the floor.
    assert tiling.cache_tile_size(256.0, 12) == tiling.FAST_TILE_FLOOR == 192
    assert tiling.cache_tile_size(4096.0, 12) == tiling.FAST_TILE_FLOOR
