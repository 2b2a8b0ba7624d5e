"""Exported EDSR files compute what the torch model computes, in every runtime that loads them."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from srwatch.train.export import export_all, load_checkpoint
from srwatch.train.model import DIV2K_MEAN_BGR, EDSR, EDSRSpec, mean_tensor

MEAN = np.asarray(DIV2K_MEAN_BGR, dtype=np.float32)
#: Odd sizes on purpose: the files must take any height and width.
HEIGHT, WIDTH = 37, 53  # in pixels

CASES = [(2, 1.0), (3, 1.0), (4, 1.0), (2, 0.5), (3, 0.5), (4, 0.5)]  # (scale, res_scale)


def small_edsr(scale: int, res_scale: float, seed: int = 0) -> EDSR:
    """A random 4 x 16 EDSR whose output stays mostly inside 0..255.

    Default init with the tail halved: outputs vary with the input (std about 15 in 0..255) yet rarely
    saturate, so the uint8 comparison below compares real values, not clipped ones.
    """
    torch.manual_seed(seed)
    model = EDSR(EDSRSpec(scale=scale, blocks=4, filters=16, res_scale=res_scale)).eval()
    with torch.no_grad():
        model.tail.weight.mul_(0.5)
        model.tail.bias.mul_(0.5)
    return model


def make_image(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 BGR image (blurred noise with some edges)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255  # stretch the contrast back
    return np.clip(img, 0, 255).astype(np.uint8)


def torch_float_output(model: EDSR, img_bgr: np.ndarray) -> np.ndarray:
    """The model's own output in 0..255 BGR (HWC float), mean added back."""
    x = torch.from_numpy(img_bgr).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        y = model((x - mean_tensor()) / 255.0) * 255.0 + mean_tensor()
    return y[0].permute(1, 2, 0).numpy()


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def nchw_blob(img_bgr: np.ndarray) -> np.ndarray:
    """What the ONNX file takes: NCHW BGR minus the mean, 0..255."""
    return np.ascontiguousarray((img_bgr.astype(np.float32) - MEAN).transpose(2, 0, 1)[None])


def from_nchw(out: np.ndarray) -> np.ndarray:
    return out[0].transpose(1, 2, 0) + MEAN


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, float], tuple[EDSR, Path, Path]]:
    """(model, .pb, .onnx) for every case, exported once."""
    out_dir = tmp_path_factory.mktemp("export")
    files = {}
    for scale, res_scale in CASES:
        model = small_edsr(scale, res_scale)
        files[scale, res_scale] = (model, *export_all(model, out_dir, f"EDSR-test-r{res_scale}_x{scale}"))
    return files


@pytest.mark.parametrize("scale,res_scale", CASES)
def test_graphdef_through_dnn_superres_matches_torch(exported, scale: int, res_scale: float) -> None:
    model, pb, _ = exported[scale, res_scale]
    img = make_image()
    expected = torch_float_output(model, img)
    assert expected.std() > 5 and np.mean((expected < 0) | (expected > 255)) < 0.01  # a real check
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(pb))
    sr.setModel("edsr", scale)
    out = sr.upsample(img)
    assert out.shape == (HEIGHT * scale, WIDTH * scale, 3)
    assert np.abs(out.astype(int) - to_uint8(expected)).max() <= 1


@pytest.mark.parametrize("scale,res_scale", CASES)
def test_onnx_through_cv2_dnn_matches_torch(exported, scale: int, res_scale: float) -> None:
    model, _, onnx_path = exported[scale, res_scale]
    net = cv2.dnn.readNet(str(onnx_path))
    # Two sizes through one net: height and width are dynamic.
    for height, width in ((HEIGHT, WIDTH), (24, 31)):
        img = make_image(height, width)
        net.setInput(nchw_blob(img))
        out = from_nchw(net.forward())
        assert out.shape == (height * scale, width * scale, 3)
        assert np.abs(out - torch_float_output(model, img)).max() < 1e-3


def test_onnx_file_layout(exported) -> None:
    for (scale, res_scale), (model, _, onnx_path) in exported.items():
        proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(proto)
        ops = {n.op_type for n in proto.graph.node}
        assert ops == {"Conv", "Relu", "Add", "DepthToSpace"} | ({"Mul"} if res_scale != 1.0 else set())
        d2s = next(n for n in proto.graph.node if n.op_type == "DepthToSpace")
        assert {a.name: onnx.helper.get_attribute_value(a) for a in d2s.attribute} == {
            "blocksize": scale, "mode": b"DCR"}
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[:2]] == [1, 3] and all(d.dim_param for d in dims[2:])
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["srwatch.algorithm"] == "edsr" and meta["srwatch.scale"] == str(scale)
        assert EDSRSpec(**json.loads(meta["srwatch.spec"])) == model.spec


def test_onnxruntime_and_openvino_agree(exported) -> None:
    """Other runtimes the engine may use read both files and give the same numbers."""
    ort = pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    model, pb, onnx_path = exported[3, 0.5]
    img = make_image()
    expected = torch_float_output(model, img)
    blob = nchw_blob(img)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert np.abs(from_nchw(session.run(None, {"input": blob})[0]) - expected).max() < 1e-3

    core = ov.Core()
    # OpenVINO's CPU plugin defaults to bf16 where the CPU has it; parity needs f32.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    onnx_out = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)(blob)[0]
    assert np.abs(from_nchw(onnx_out) - expected).max() < 1e-3
    # The TensorFlow frontend reads the hand-made GraphDef: NHWC in, NCHW out.
    pb_out = core.compile_model(core.read_model(str(pb)), "CPU", config)(blob.transpose(0, 2, 3, 1))[0]
    assert np.abs(from_nchw(pb_out) - expected).max() < 1e-3


def test_checkpoint_prefers_ema(tmp_path: Path) -> None:
    model, ema = small_edsr(3, 1.0, seed=1), small_edsr(3, 1.0, seed=2)
    averaged = torch.optim.swa_utils.AveragedModel(ema)
    path = tmp_path / "ckpt.pt"
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict(), "ema": averaged.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.tail.weight, ema.tail.weight)

    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict()}, path)
    assert torch.equal(load_checkpoint(path).tail.weight, model.tail.weight)


def test_cli_writes_both_files(tmp_path: Path) -> None:
    from srwatch.train.export import main

    model = small_edsr(2, 1.0)
    torch.save({"spec": model.spec.to_dict(), "model": model.state_dict()}, tmp_path / "ckpt.pt")
    assert main([str(tmp_path / "ckpt.pt"), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["EDSR-srwatch_x2.onnx", "EDSR-srwatch_x2.pb"]
