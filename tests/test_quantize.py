"""INT8: the shipped quantized models (models/*-int8.xml), model.precision: int8, srwatch.quantize.

Bounds from the measurement behind models/README.md ("INT8"), on Set5 butterfly: the int8
output is 52.2 / 48.9 / 46.8 dB (x2 / x3 / x4) from the f32 output (all pixels, RGB), and its
Y-PSNR against the HR is within 0.03 dB of f32's, 5-7 dB above bicubic. The bounds leave room for
CPUs without AMX/VNNI/bf16, where OpenVINO picks other kernels.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, psnr, require
from srwatch import evaluate as ev
from srwatch.config import ModelConfig, TileConfig, parse_config
from srwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
OFF = TileConfig(size="off")

#: Shipped int8 scales (models/README.md: each within 0.05 dB of f32 on Set5).
SHIPPED_SCALES = (2, 3, 4)


def f32_model(scale: int) -> Path:
    return MODELS / f"EDSR-srwatch_x{scale}.onnx"


def load(path: Path, precision: str, engine: str = "openvino", threads: int = 2):
    from srwatch.engine import load_engine

    return load_engine(ModelConfig(path=path, engine=engine, precision=precision), OFF, threads)


def set5_pair(name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) uint8 RGB of a Set5 image by the evaluation protocol (fails on CI when missing)."""
    return ev.load_hr_lr(require(SHARED / "datasets" / "Set5" / "HR" / f"{name}.png"), scale)


def y_psnr(sr_rgb: np.ndarray, hr_rgb: np.ndarray, scale: int) -> float:
    """Y-PSNR with a ``scale`` px border, as srwatch eval scores."""
    return ev.psnr(ev.shave(ev.rgb_to_y(sr_rgb), scale), ev.shave(ev.rgb_to_y(hr_rgb), scale))


# --- the shipped files, through the real engine --------------------------------------------------


@pytest.mark.parametrize("scale", SHIPPED_SCALES)
def test_shipped_int8_model_is_small_and_beside_its_f32_model(scale: int) -> None:
    from srwatch.engine.openvino import int8_model_path
    from srwatch.quantize import int8_path

    xml = int8_model_path(f32_model(scale))
    assert xml == int8_path(f32_model(scale)) == MODELS / f"EDSR-srwatch_x{scale}-int8.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    total = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    assert total < 1_000_000, f"{xml.name} + .bin is {total} bytes; the IR is committed, keep it small"


@pytest.mark.parametrize("scale", SHIPPED_SCALES)
def test_int8_loads_through_the_engine_and_upscales(scale: int) -> None:
    pytest.importorskip("openvino")
    engine = load(f32_model(scale), "int8")
    assert engine.name == "openvino" and engine.scale == scale
    assert engine.model_path.name == f"EDSR-srwatch_x{scale}-int8.xml"
    img = np.random.default_rng(scale).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    out = engine.upscale(img)
    assert out.shape == (21 * scale, 34 * scale, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("scale", SHIPPED_SCALES)
def test_int8_stays_close_to_f32_and_beats_bicubic_on_set5(scale: int) -> None:
    pytest.importorskip("openvino")
    hr, lr = set5_pair("butterfly", scale)
    bgr = np.ascontiguousarray(lr[..., ::-1])
    f32 = load(f32_model(scale), "f32").upscale(bgr)[..., ::-1]
    int8 = load(f32_model(scale), "int8").upscale(bgr)[..., ::-1]
    assert int8.shape == hr.shape
    # Measured 46.8-52.2 dB (module docstring); 43 leaves room for other CPUs' kernels.
    assert psnr(int8, f32) >= 43.0
    # The model's gain over bicubic (5-7 dB on butterfly) survives quantization.
    bicubic = y_psnr(ev.bicubic_upscaler(scale)(lr), hr, scale)
    assert y_psnr(int8, hr, scale) >= bicubic + 2.0
    assert y_psnr(int8, hr, scale) >= y_psnr(f32, hr, scale) - 0.3


# --- model.precision: int8 is a ConfigError where it cannot work ---------------------------------


def test_int8_without_its_ir_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model = shutil.copy(f32_model(3), tmp_path / "EDSR-srwatch_x3.onnx")
    with pytest.raises(ConfigError, match=r"model\.precision.*EDSR-srwatch_x3-int8\.xml"):
        load(Path(model), "int8")
    load(Path(model), "f32")  # the model itself is fine


@pytest.mark.parametrize("engine", ["opencv", "onnxruntime"])
def test_int8_needs_the_openvino_engine(engine: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.precision: int8 needs model\.engine: openvino"):
        load(f32_model(3), "int8", engine=engine)


def test_config_accepts_int8_and_names_the_key_for_a_bad_precision(tmp_path: Path) -> None:
    raw = {"paths": {"inbox": "in", "outbox": "out", "quarantine": "q", "archive": "a"},
           "model": {"path": str(f32_model(3)), "engine": "openvino", "precision": "int8"}}
    assert parse_config(raw, tmp_path).model.precision == "int8"
    raw["model"]["precision"] = "int4"
    with pytest.raises(ConfigError, match=r"model\.precision"):
        parse_config(raw, tmp_path)


# --- srwatch.quantize ------------------------------------------------------------------------------


def test_calibration_blobs_are_lr_patches_fed_as_the_engine_feeds_edsr() -> None:
    from srwatch.engine.base import bgr_to_edsr_blob
    from srwatch.quantize import calibration_blobs
    from srwatch.train.data import list_images, load_rgb, make_pair

    t91 = require(SHARED / "datasets" / "T91")
    blobs = calibration_blobs([t91], scale=3, patch=48, limit=3, seed=0)
    assert len(blobs) == 3
    first = make_pair(load_rgb(list_images([t91])[0]), 3).lr  # the LR the model sees, BGR
    side = min(48, *first.shape[:2])
    assert blobs[0].shape == (1, 3, side, side) and blobs[0].dtype == np.float32
    # Some crop of that LR image, preprocessed exactly as the engine does (never resized).
    candidates = [
        bgr_to_edsr_blob(np.ascontiguousarray(first[y : y + side, x : x + side]))
        for y in range(first.shape[0] - side + 1) for x in range(first.shape[1] - side + 1)
    ]
    assert any(np.array_equal(blobs[0], c) for c in candidates)


def test_ignored_names_pick_the_float_parts_of_the_graph() -> None:
    ov = pytest.importorskip("openvino")
    from srwatch.quantize import ignored_names

    model = ov.convert_model(str(f32_model(3)))
    assert ignored_names(model, ["first", "last"]) == ["head/WithoutBiases", "tail/WithoutBiases"]
    assert ignored_names(model, ["body/add"]) == ["body/add"]
    skips = ignored_names(model, ["skips"])  # the 16 residual adds and the long skip, no bias add
    assert len(skips) == 17 and "body/add" in skips and all(s.endswith("/add") for s in skips)
    with pytest.raises(ValueError, match="nothing"):
        ignored_names(model, ["nothing"])


def test_a_tiny_quantize_run_writes_a_loadable_ir(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from srwatch import quantize

    t91 = require(SHARED / "datasets" / "T91")
    model = Path(shutil.copy(f32_model(3), tmp_path / "EDSR-srwatch_x3.onnx"))
    started = time.monotonic()
    status = quantize.main([str(model), "--calibration", str(t91), "--images", "4", "--patch", "32",
                            "--out", str(tmp_path)])
    assert status == 0
    assert time.monotonic() - started < 60
    xml = tmp_path / "EDSR-srwatch_x3-int8.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    text = xml.read_text()
    assert "source_sha256" in text and "EDSR-srwatch_x3.onnx" in text  # provenance in rt_info
    # Beside its f32 model, the engine takes it for model.precision: int8.
    engine = load(model, "int8")
    assert engine.model_path == xml
    _, lr = set5_pair("bird", 3)
    bgr = np.ascontiguousarray(lr[..., ::-1])
    out = engine.upscale(bgr)
    assert out.shape == (lr.shape[0] * 3, lr.shape[1] * 3, 3)
    # Four calibration patches still give a usable model (measured 50.5 dB from f32), not garbage.
    assert psnr(out, load(model, "f32").upscale(bgr)) >= 40.0


def test_quantize_cli_refuses_a_missing_model_and_an_unknown_scale(tmp_path: Path, capsys) -> None:
    from srwatch import quantize

    assert quantize.main([str(tmp_path / "none.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"")
    assert quantize.main([str(odd)]) == 2
    assert "--scale" in capsys.readouterr().err
