"""Shared fixtures: the ../shared folder (real models and images) and small ONNX test models."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

#: The upstream OpenCV dnn_superres files in ../shared/models.
UPSTREAM_MODELS = [
    f"{name}_x{scale}.pb"
    for name, scales in (("ESPCN", (2, 3, 4)), ("FSRCNN", (2, 3, 4)), ("FSRCNN-small", (2, 3, 4)), ("LapSRN", (2, 4, 8)))
    for scale in scales
]


def require(path: Path) -> Path:
    """``path`` if it exists; else fail on CI (CI=true) and skip elsewhere."""
    if not path.exists():
        message = f"missing shared test data: {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared read-only data folder next to the checkout."""
    return SHARED


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    """../shared/models."""
    return require(shared_dir / "models")


def set5(name: str = "butterfly") -> np.ndarray:
    """A Set5 HR image as BGR uint8 (skips/fails when the data is missing)."""
    img = cv2.imread(str(require(SHARED / "datasets" / "Set5" / "HR" / f"{name}.png")), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def psnr(a: np.ndarray, b: np.ndarray, peak: Optional[float] = None) -> float:
    """PSNR in dB (peak from the dtype unless given)."""
    if peak is None:
        peak = 65535.0 if a.dtype == np.uint16 else 255.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


# --- small ONNX models built with onnx.helper ---------------------------------------------------


def _conv(nodes: list, inits: list, x: str, name: str, cin: int, cout: int, k: int, rng: np.random.Generator,
          std: float, bias: float = 0.0) -> str:
    from onnx import numpy_helper, helper

    weight = (rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
    inits.append(numpy_helper.from_array(weight, f"{name}.w"))
    inits.append(numpy_helper.from_array(np.full(cout, bias, np.float32), f"{name}.b"))
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], kernel_shape=[k, k], pads=[k // 2] * 4))
    return name


def build_onnx_model(path: Path, kind: str, scale: int, metadata: Optional[dict[str, str]] = None, seed: int = 0) -> Path:
    """A random-weight super-resolution ONNX file: ``kind`` 'y' (FSRCNN-like, 1 channel in 0..1)
    or 'edsr' (EDSR-like, BGR minus mean in 0..255), NCHW with dynamic height/width, DepthToSpace DCR.

    Weights are scaled so the output stays mostly inside the valid range (not all clipped).
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    channels = 1 if kind == "y" else 3
    if kind == "y":
        h = _conv(nodes, inits, "input", "c1", 1, 8, 5, rng, 0.2)
        nodes.append(helper.make_node("Relu", [h], ["r1"]))
        t = _conv(nodes, inits, "r1", "c2", 8, scale * scale, 3, rng, 0.05, bias=0.35)
    else:
        h = _conv(nodes, inits, "input", "head", 3, 16, 3, rng, 0.01)
        b = _conv(nodes, inits, h, "b1", 16, 16, 3, rng, 0.05)
        nodes.append(helper.make_node("Relu", [b], ["b1r"]))
        b2 = _conv(nodes, inits, "b1r", "b2", 16, 16, 3, rng, 0.05)
        nodes.append(helper.make_node("Add", [h, b2], ["body"]))
        t = _conv(nodes, inits, "body", "tail", 16, 3 * scale * scale, 3, rng, 0.5)
    nodes.append(helper.make_node("DepthToSpace", [t], ["output"], blocksize=scale, mode="DCR"))
    graph = helper.make_graph(
        nodes, f"test-{kind}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, "H", "W"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def layout(tmp_path: Path):
    """The folders of one test daemon under tmp_path (needs the shipped model: fails on CI, skips elsewhere)."""
    from daemon_harness import Layout, require_model

    require_model()
    return Layout(tmp_path)
