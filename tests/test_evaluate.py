"""The evaluation protocol reproduces the published Set5 figures (../shared/README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require
from srwatch import evaluate as ev

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
SET5 = SHARED_DIR / "datasets" / "Set5" / "HR"


@pytest.mark.parametrize("name,expected", [("FSRCNN_x3.pb", (3, "fsrcnn")), ("FSRCNN-small_x2.pb", (2, "fsrcnn")),
                                           ("EDSR_x4.pb", (4, "edsr")), ("LapSRN_x8.pb", (8, "lapsrn")),
                                           ("EDSR-srwatch_x3.pb", (3, "edsr"))])
def test_parse_model_name(name: str, expected: tuple[int, str]) -> None:
    scale, algorithm = expected
    assert ev.parse_model_name(Path(name)) == (algorithm, scale)


def test_parse_model_name_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="--algorithm"):
        ev.parse_model_name(Path("model.pb"))


def test_metrics_basics() -> None:
    white, black = np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1, 3), np.uint8)
    assert ev.rgb_to_y(white)[0, 0] == pytest.approx(235.0)
    assert ev.rgb_to_y(black)[0, 0] == pytest.approx(16.0)
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (40, 40))
    assert ev.ssim(a, a) == pytest.approx(1.0)
    assert ev.ssim(a, a + rng.normal(0, 20, a.shape)) < 0.99
    # Flat images: SSIM reduces to the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    c1 = (0.01 * 255) ** 2
    flat = np.full((20, 20), 100.0)
    assert ev.ssim(flat, flat + 10) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))
    assert ev.psnr(a, a + 1.0) == pytest.approx(20 * np.log10(255.0))


def test_set5_x3_reproduces_published_psnr() -> None:
    """bicubic 30.40 dB and FSRCNN_x3.pb 30.59 dB (Y, 3 px border, PIL bicubic LR)."""
    require(SET5)
    model = require(SHARED_DIR / "models" / "FSRCNN_x3.pb")
    scale, methods = ev.build_methods([model], scale=None, algorithm=None)
    assert scale == 3
    bicubic, fsrcnn = ev.evaluate(methods, SET5, scale)
    assert [s.image for s in bicubic.scores] == ["baby", "bird", "butterfly", "head", "woman"]
    assert bicubic.mean_psnr == pytest.approx(30.40, abs=0.01)
    assert fsrcnn.mean_psnr == pytest.approx(30.59, abs=0.01)
    assert 0.8 < bicubic.mean_ssim < fsrcnn.mean_ssim < 1.0


def test_main_eval_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    require(SET5)
    assert ev.main_eval(["--scale", "3", "--dataset", str(SET5), "--time"]) == 0
    out = capsys.readouterr().out
    assert "| bicubic |" in out and "| 30.40 |" in out and "s/input MP" in out


def test_main_eval_reports_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main_eval([]) == 2
    assert "--scale" in capsys.readouterr().err


def test_onnx_edsr_matches_graphdef(tmp_path: Path) -> None:
    """upscale_with_model runs our ONNX like dnn_superres runs our .pb (same uint8 output)."""
    torch = pytest.importorskip("torch")
    from srwatch.train.export import export_all
    from srwatch.train.model import EDSR, EDSRSpec

    torch.manual_seed(0)
    pb, onnx_path = export_all(EDSR(EDSRSpec(scale=2, blocks=2, filters=8)), tmp_path, "EDSR-test_x2")
    assert ev.model_algorithm_scale(onnx_path) == ("edsr", 2)
    img = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    from_onnx = ev.upscale_with_model(onnx_path, img, "edsr", 2)
    from_pb = ev.upscale_with_model(pb, img, "edsr", 2)
    assert from_onnx.shape == (42, 60, 3) and from_onnx.dtype == np.uint8
    assert np.abs(from_onnx.astype(int) - from_pb).max() <= 1
