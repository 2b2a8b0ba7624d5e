"""Training smoke test, exact resume, export through the daemon's engine, and the shipped model."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")

from conftest import require  # noqa: E402
from srwatch.config import ModelConfig, TileConfig  # noqa: E402
from srwatch.engine import load_engine  # noqa: E402
from srwatch.evaluate import load_hr_lr, psnr, rgb_to_y, shave  # noqa: E402
from srwatch.train import export, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SET5 = SHARED / "datasets" / "Set5" / "HR"


def tiny_args(out: Path, *extra: str) -> list[str]:
    return [
        "--blocks", "2", "--filters", "8", "--steps", "12", "--batch", "4", "--patch", "16",
        "--warmup", "2", "--val-every", "12", "--ckpt-every", "4", "--zooms", "1.0",
        "--train-dir", str(require(SET5)), "--val-dir", str(SET5), "--threads", "1", "--out", str(out), *extra,
    ]


def test_tiny_training_resumes_exactly_and_exports_for_the_engine(tmp_path: Path) -> None:
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train.main(tiny_args(straight)) == 0
    assert train.main(tiny_args(pieces, "--stop-at", "5")) == 0
    first = torch.load(pieces / "last.pt", weights_only=False)
    assert first["step"] == 5
    assert train.main(tiny_args(pieces)) == 0  # resumes at step 5
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(pieces / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 12
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), f"resume changed {key}"

    pb, onnx_path = export.export_all(export.load_checkpoint(straight / "last.pt"), tmp_path / "m", "EDSR-tiny_x3")
    img = cv2.imread(str(SET5 / "baby.png"))[:37, :53]
    outs = []
    for path in (pb, onnx_path):
        engine = load_engine(ModelConfig(engine="opencv", path=path), TileConfig(size="off"), threads=1)
        out = engine.upscale(img)
        assert engine.scale == 3
        assert out.shape == (111, 159, 3) and out.dtype == np.uint8
        assert 0 < out.mean() < 255 and out.std() > 1
        outs.append(out)
    assert psnr(outs[0].astype(np.float64), outs[1].astype(np.float64)) >= 45


SHIPPED = [REPO / "models" / f"EDSR-srwatch_x{s}" for s in (2, 3, 4)]


@pytest.mark.parametrize("stem", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_loads_in_both_formats_agrees_and_beats_bicubic(stem: Path) -> None:
    pb, onnx_path = stem.with_suffix(".pb"), stem.with_suffix(".onnx")
    if stem.name.endswith("_x3") or pb.exists():
        assert pb.is_file() and onnx_path.is_file(), f"{stem} must ship as .pb and .onnx"
    else:
        pytest.skip(f"{stem.name} is not shipped")
    assert pb.stat().st_size <= 10 * 2**20 and onnx_path.stat().st_size <= 10 * 2**20
    scale = int(stem.name[-1])
    hr, lr = load_hr_lr(require(SET5 / "butterfly.png"), scale)  # RGB
    results = []
    for path in (pb, onnx_path):
        engine = load_engine(ModelConfig(engine="opencv", path=path), TileConfig(size="off"), threads=2)
        results.append(engine.upscale(np.ascontiguousarray(lr[:, :, ::-1]))[:, :, ::-1])  # BGR in, RGB back
    assert psnr(results[0].astype(np.float64), results[1].astype(np.float64)) >= 45, "export parity"
    h, w = lr.shape[:2]
    from PIL import Image

    bicubic = np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))
    y_hr = shave(rgb_to_y(hr), scale)
    gain = psnr(shave(rgb_to_y(results[0]), scale), y_hr) - psnr(shave(rgb_to_y(bicubic), scale), y_hr)
    assert gain >= 1.5, f"only {gain:.2f} dB over bicubic on butterfly"
