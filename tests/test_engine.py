"""Engines: model resolution, exact parity with cv2.dnn_superres, engine parity, load-time checks."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import UPSTREAM_MODELS, build_onnx_model, psnr, require, set5
from srwatch.config import ModelConfig, TileConfig
from srwatch.engine import load_engine, resolve_model
from srwatch import tiling
from srwatch.engine.base import DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL, PIPELINE_BYTES_PER_OUTPUT_PIXEL, Engine
from srwatch.engine.models import parse_model_name, read_onnx_metadata
from srwatch.errors import ModelError, ModelLoadError

OFF = TileConfig(size="off")


@pytest.fixture(scope="module")
def small_bgr() -> np.ndarray:
    """A 40x32 crop of a real photo with edges and colour (fast on every model)."""
    return np.ascontiguousarray(set5("butterfly")[96:128, 100:140])


def upstream(models_dir: Path, name: str) -> Path:
    return require(models_dir / name)


def reference_upsample(path: Path, img: np.ndarray) -> np.ndarray:
    """cv2.dnn_superres on its own, as its documentation shows it."""
    algo, scale = parse_model_name(path)
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(path))
    sr.setModel(algo, scale)
    return sr.upsample(img)


# --- names and metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("EDSR_x3.pb", ("edsr", 3)),
        ("FSRCNN-small_x4.pb", ("fsrcnn", 4)),
        ("LapSRN_x8.pb", ("lapsrn", 8)),
        ("ESPCN_x2.pb", ("espcn", 2)),
        ("EDSR-srwatch_x3.onnx", ("edsr", 3)),
        ("my_model.onnx", (None, None)),
        ("SRGAN_x4.pb", (None, 4)),
    ],
)
def test_parse_model_name(name: str, expected: tuple) -> None:
    assert parse_model_name(Path(name)) == expected


def test_explicit_config_wins_over_name(models_dir: Path) -> None:
    path = upstream(models_dir, "FSRCNN_x3.pb")
    info = resolve_model(ModelConfig(path=path, algorithm="espcn", scale=2))
    assert (info.algorithm, info.scale, info.format) == ("espcn", 2, "pb")


def test_onnx_metadata_tells_algorithm_and_scale(tmp_path: Path) -> None:
    path = build_onnx_model(tmp_path / "model.onnx", "y", 2, {"srwatch.algorithm": "fsrcnn", "srwatch.scale": "2"})
    assert read_onnx_metadata(path)["srwatch.scale"] == "2"
    info = resolve_model(ModelConfig(path=path))
    assert (info.algorithm, info.scale, info.format) == ("fsrcnn", 2, "onnx")


def test_unknown_algorithm_and_scale_name_the_config_keys(tmp_path: Path) -> None:
    path = build_onnx_model(tmp_path / "model.onnx", "y", 2)
    with pytest.raises(ModelLoadError, match="model.algorithm"):
        resolve_model(ModelConfig(path=path))
    with pytest.raises(ModelLoadError, match="model.scale"):
        resolve_model(ModelConfig(path=path, algorithm="fsrcnn"))


def test_unsupported_suffix_and_garbage_file(tmp_path: Path) -> None:
    bad_suffix = tmp_path / "EDSR_x3.h5"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=".pb"):
        resolve_model(ModelConfig(path=bad_suffix))
    garbage = tmp_path / "FSRCNN_x3.pb"
    garbage.write_bytes(b"this is not a TensorFlow graph" * 10)
    with pytest.raises(ModelLoadError, match="FSRCNN_x3.pb"):
        load_engine(ModelConfig(engine="opencv", path=garbage), OFF, 1)


# --- exact parity with cv2.dnn_superres ---------------------------------------------------------


@pytest.mark.parametrize("name", UPSTREAM_MODELS)
def test_opencv_engine_equals_dnn_superres(models_dir: Path, name: str, small_bgr: np.ndarray) -> None:
    path = upstream(models_dir, name)
    engine = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1)
    expected = reference_upsample(path, small_bgr)
    out = engine.upscale(small_bgr)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert np.array_equal(out, expected)
    # The named stages around a plain cv2.dnn forward (what .onnx files, 16-bit input and the
    # other engines use) reproduce dnn_superres bit for bit as well.
    staged = Engine.upscale_whole(engine, small_bgr)
    assert np.array_equal(staged, expected)


def test_grayscale_luma_model_equals_dnn_superres(models_dir: Path, small_bgr: np.ndarray) -> None:
    path = upstream(models_dir, "ESPCN_x3.pb")
    gray = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
    out = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1).upscale(gray)
    assert out.shape == (gray.shape[0] * 3, gray.shape[1] * 3)
    assert np.array_equal(out, reference_upsample(path, gray))


def test_16bit_input_gives_16bit_output(models_dir: Path, small_bgr: np.ndarray) -> None:
    engine = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN_x2.pb")), OFF, 1)
    out16 = engine.upscale(small_bgr.astype(np.uint16) * 257)
    assert out16.dtype == np.uint16
    out8 = engine.upscale(small_bgr)
    # Same maths in float instead of 8 bits: only rounding differs.
    assert psnr(out16, out8.astype(np.uint16) * 257) > 40.0


# --- load-time checks ---------------------------------------------------------------------------


def test_wrong_scale_is_a_load_error(models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="model.scale"):
        load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "LapSRN_x8.pb"), scale=4), OFF, 1)
    with pytest.raises(ModelLoadError, match="model.scale"):
        load_engine(ModelConfig(path=upstream(models_dir, "ESPCN_x3.pb"), engine="openvino", scale=2), OFF, 1)


def test_wrong_algorithm_is_a_load_error(models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="test forward"):
        load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN_x3.pb"), algorithm="edsr"), OFF, 1)


def test_model_failure_on_an_input_is_a_model_error(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN_x2.pb")), OFF, 1)

    def broken(img: np.ndarray) -> np.ndarray:
        raise cv2.error("out of memory")

    monkeypatch.setattr(engine, "upscale_whole", broken)
    with pytest.raises(ModelError, match="out of memory"):
        engine.upscale(np.zeros((8, 8, 3), np.uint8))


def test_unavailable_device_and_precision_are_load_errors(models_dir: Path) -> None:
    path = upstream(models_dir, "FSRCNN_x2.pb")
    if cv2.cuda.getCudaEnabledDeviceCount() == 0:
        with pytest.raises(ModelLoadError, match="cuda"):
            load_engine(ModelConfig(engine="opencv", path=path, device="cuda"), OFF, 1)
    with pytest.raises(ModelLoadError, match="openvino"):
        load_engine(ModelConfig(engine="opencv", path=path, precision="bf16"), OFF, 1)
    with pytest.raises(ModelLoadError, match="convert it to ONNX"):
        load_engine(ModelConfig(path=path, engine="onnxruntime"), OFF, 1)


@pytest.mark.parametrize("engine, extra", [("openvino", "srwatch[openvino]"), ("onnxruntime", "srwatch[onnxruntime]")])
def test_missing_runtime_package_is_a_clear_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, extra: str
) -> None:
    path = build_onnx_model(tmp_path / "FSRCNN-test_x2.onnx", "y", 2)
    monkeypatch.setitem(sys.modules, engine, None)  # makes `import <engine>` raise ImportError
    with pytest.raises(ModelLoadError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        load_engine(ModelConfig(path=path, engine=engine), OFF, 1)


@pytest.mark.parametrize("engine, precision, offered_by", [
    ("opencv", "f16", "onnxruntime"), ("openvino", "f16", "onnxruntime"), ("onnxruntime", "bf16", "openvino"),
])
def test_a_precision_the_engine_does_not_offer_is_a_load_error_naming_the_one_that_does(
    tmp_path: Path, engine: str, precision: str, offered_by: str
) -> None:
    if engine == "openvino":
        pytest.importorskip("openvino")
    path = build_onnx_model(tmp_path / "FSRCNN-test_x2.onnx", "y", 2)
    with pytest.raises(ModelLoadError, match=f"model.precision: {precision} needs model.engine: {offered_by}"):
        load_engine(ModelConfig(path=path, engine=engine, precision=precision), OFF, 1)


def test_onnxruntime_f16_keeps_the_default_models_quality() -> None:
    """model.precision: f16 (float16 graph, float32 in and out) stays within 0.05 dB of f32 (Set5 butterfly)."""
    model = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"
    hr = set5("butterfly")
    hr = hr[: hr.shape[0] // 3 * 3, : hr.shape[1] // 3 * 3]
    lr = cv2.resize(hr, (hr.shape[1] // 3, hr.shape[0] // 3), interpolation=cv2.INTER_AREA)
    f32_engine = load_engine(ModelConfig(path=model, engine="onnxruntime", precision="f32"), OFF, 2)
    f16_engine = load_engine(ModelConfig(path=model, engine="onnxruntime", precision="f16"), OFF, 2)
    f32, f16 = f32_engine.upscale(lr), f16_engine.upscale(lr)
    assert f16.shape == f32.shape and f16.dtype == np.uint8
    assert not np.array_equal(f16, f32), "f16 gave f32's exact output: was the graph converted?"
    assert abs(psnr(f16, hr) - psnr(f32, hr)) < 0.05
    assert int(np.abs(f16.astype(np.int16) - f32.astype(np.int16)).max()) <= 2


def test_f16_without_the_converter_is_a_clear_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)  # makes the import raise ImportError
    with pytest.raises(ModelLoadError, match=r"f16 needs onnx and onnxconverter-common: pip install srwatch\[onnxruntime\]"):
        load_engine(ModelConfig(path=model, engine="onnxruntime", precision="f16"), OFF, 1)


# --- other engines against opencv ---------------------------------------------------------------


@pytest.mark.parametrize("name", UPSTREAM_MODELS)
def test_openvino_matches_opencv(models_dir: Path, name: str, small_bgr: np.ndarray) -> None:
    pytest.importorskip("openvino")
    path = upstream(models_dir, name)
    reference = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1).upscale(small_bgr)
    out = load_engine(ModelConfig(path=path, engine="openvino", precision="f32"), OFF, 2).upscale(small_bgr)
    assert out.shape == reference.shape
    assert psnr(out, reference) >= 45.0


def test_openvino_bf16_is_an_option(models_dir: Path, small_bgr: np.ndarray) -> None:
    pytest.importorskip("openvino")
    path = upstream(models_dir, "FSRCNN_x3.pb")
    reference = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1).upscale(small_bgr)
    out = load_engine(ModelConfig(path=path, engine="openvino", precision="bf16"), OFF, 2).upscale(small_bgr)
    assert psnr(out, reference) >= 45.0


def test_openvino_leaves_thread_placement_to_the_kernel(models_dir: Path, small_bgr: np.ndarray) -> None:
    # Pinned, every worker process put its inference thread on the first core: two 1-thread
    # workers shared one core at 50% each (benchmarks/README.md, "CPU pinning").
    pytest.importorskip("openvino")
    engine = load_engine(ModelConfig(path=upstream(models_dir, "FSRCNN_x3.pb"), engine="openvino"), OFF, 1)
    engine.upscale(small_bgr)
    compiled, _ = engine.compiled_for(engine.input_shape(np.zeros((1, 1) + small_bgr.shape[:2], np.float32)))
    assert compiled.get_property("ENABLE_CPU_PINNING") is False


@pytest.mark.parametrize("kind, scale", [("y", 2), ("y", 4), ("edsr", 3)])
def test_onnx_model_on_all_engines(tmp_path: Path, kind: str, scale: int, small_bgr: np.ndarray) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    algorithm = "fsrcnn" if kind == "y" else "edsr"
    path = build_onnx_model(tmp_path / f"test-{kind}_x{scale}.onnx", kind, scale, {"srwatch.algorithm": algorithm})
    outs = {
        name: load_engine(ModelConfig(path=path, engine=name), OFF, 2).upscale(small_bgr)
        for name in ("opencv", "openvino", "onnxruntime")
    }
    assert outs["opencv"].shape == (small_bgr.shape[0] * scale, small_bgr.shape[1] * scale, 3)
    assert 5 < outs["opencv"].mean() < 250  # the random model's output is not all clipped
    assert psnr(outs["openvino"], outs["opencv"]) >= 45.0
    assert psnr(outs["onnxruntime"], outs["opencv"]) >= 45.0


def test_exported_edsr_pb_and_onnx_agree(tmp_path: Path, small_bgr: np.ndarray) -> None:
    """Our EDSR export: .pb through dnn_superres 'edsr' vs .onnx through our EDSR stages."""
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("srwatch.train.export")
    from srwatch.train.model import EDSR, EDSRSpec

    torch.manual_seed(0)
    pb, onnx_path = export.export_all(EDSR(EDSRSpec(scale=2, blocks=2, filters=8)), tmp_path, "EDSR-srwatch_x2")
    engine = load_engine(ModelConfig(engine="opencv", path=pb), OFF, 1)
    reference = engine.upscale(small_bgr)
    assert np.array_equal(reference, reference_upsample_edsr(pb, small_bgr))
    assert np.array_equal(Engine.upscale_whole(engine, small_bgr), reference)  # our EDSR stages
    for name in ("opencv", "openvino", "onnxruntime"):
        out = load_engine(ModelConfig(path=onnx_path, engine=name), OFF, 2).upscale(small_bgr)
        assert psnr(out, reference) >= 45.0, name


def reference_upsample_edsr(path: Path, img: np.ndarray) -> np.ndarray:
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(path))
    sr.setModel("edsr", 2)
    return sr.upsample(img)


# --- tile 'auto' --------------------------------------------------------------------------------


def test_auto_tile_size_follows_the_widest_layer(models_dir: Path) -> None:
    tile = TileConfig(size="auto", max_memory_mb=64, overlap=8)
    small = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN-small_x3.pb")), tile, 1)
    big = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "LapSRN_x8.pb")), tile, 1)
    assert small.widest_layer() == pytest.approx(32.0)  # FSRCNN-small: 32 filters at input size
    assert big.widest_layer() == pytest.approx(64.0 * 16)  # LapSRN: 64 filters at 4x4 the input size
    assert big.tile_size is not None and small.tile_size is not None
    assert big.tile_size < small.tile_size
    # The window fits the budget by the documented estimate.
    window = big.tile_size + 2 * tile.overlap
    assert window * window * big.bytes_per_input_pixel() <= tile.max_memory_mb * 2**20


# --- tiles: core-only post-processing into the preallocated result --------------------------------


@pytest.mark.parametrize("kind, scale", [("y", 3), ("edsr", 2)])
def test_tiled_engines_agree(tmp_path: Path, kind: str, scale: int, small_bgr: np.ndarray) -> None:
    """Every engine's output blob goes through the same core-only stages, unchanged by them."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    algorithm = "fsrcnn" if kind == "y" else "edsr"
    path = build_onnx_model(tmp_path / f"t-{kind}_x{scale}.onnx", kind, scale, {"srwatch.algorithm": algorithm})
    tile = TileConfig(size=16, overlap=4)
    outs = {name: load_engine(ModelConfig(path=path, engine=name), tile, 2).upscale(small_bgr)
            for name in ("opencv", "openvino", "onnxruntime")}
    whole = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1).upscale(small_bgr)
    assert outs["opencv"].shape == whole.shape
    assert psnr(outs["opencv"], whole) >= 45.0
    assert psnr(outs["openvino"], outs["opencv"]) >= 45.0
    assert psnr(outs["onnxruntime"], outs["opencv"]) >= 45.0


def test_upscale_into_a_given_array(models_dir: Path, small_bgr: np.ndarray) -> None:
    path = upstream(models_dir, "FSRCNN_x2.pb")
    expected = reference_upsample(path, small_bgr)
    for tile in (OFF, TileConfig(size=16, overlap=4)):
        engine = load_engine(ModelConfig(engine="opencv", path=path), tile, 1)
        rgba = np.zeros(expected.shape[:2] + (4,), np.uint8)
        assert engine.upscale(small_bgr, out=rgba[..., :3]) is not None
        if tile is OFF:
            assert np.array_equal(rgba[..., :3], expected)
        else:
            assert psnr(rgba[..., :3], expected) >= 45.0
        assert not rgba[..., 3].any()
        with pytest.raises(ValueError, match="output array"):
            engine.upscale(small_bgr, out=np.zeros(expected.shape, np.uint16))


def test_a_tile_failure_is_a_model_error(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN_x2.pb")), TileConfig(size=16, overlap=4), 1)

    def broken(window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        raise cv2.error("out of memory")

    monkeypatch.setattr(engine, "upscale_tile", broken)
    with pytest.raises(ModelError, match="out of memory"):
        engine.upscale(np.zeros((64, 64, 3), np.uint8))


def test_a_forward_of_the_wrong_scale_is_a_model_error(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "ESPCN_x3.pb")), TileConfig(size=16, overlap=4), 1)
    monkeypatch.setattr(engine, "forward", lambda blob: np.zeros(blob.shape[:2] + (blob.shape[2] * 2, blob.shape[3] * 2), np.float32))
    with pytest.raises(ModelError, match=r"not x3 \(it looks like x2\)"):
        engine.upscale(np.zeros((40, 40, 3), np.uint16))


def test_pipeline_memory_figure_follows_the_path(tmp_path: Path, models_dir: Path) -> None:
    """dnn_superres' own upsample (8-bit .pb on opencv) holds more per pixel than the staged stages."""
    pb = load_engine(ModelConfig(engine="opencv", path=upstream(models_dir, "FSRCNN_x3.pb")), OFF, 1)
    onnx_path = build_onnx_model(tmp_path / "m_x3.onnx", "y", 3, {"srwatch.algorithm": "fsrcnn"})
    staged = load_engine(ModelConfig(engine="opencv", path=onnx_path), OFF, 1)
    assert pb.pipeline_bytes_per_output_pixel == DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL
    assert staged.pipeline_bytes_per_output_pixel == PIPELINE_BYTES_PER_OUTPUT_PIXEL
    assert PIPELINE_BYTES_PER_OUTPUT_PIXEL < DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL


def test_engine_auto_is_openvino_when_installed_else_opencv(monkeypatch) -> None:
    from srwatch.config import resolve_engine

    pytest.importorskip("openvino")
    assert resolve_engine(ModelConfig(path=Path("m.onnx"))) == "openvino"
    assert resolve_engine(ModelConfig(path=Path("m.onnx"), engine="opencv")) == "opencv"
    assert resolve_engine(ModelConfig(path=Path("m.onnx"), device="cuda")) == "opencv"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert resolve_engine(ModelConfig(path=Path("m.onnx"))) == "opencv"


@pytest.mark.parametrize("name", UPSTREAM_MODELS)
def test_default_precision_on_openvino_stays_close_to_opencv_on_a_photo(models_dir: Path, name: str) -> None:
    """precision auto = bf16 on openvino: within a few grey levels of dnn_superres on a real photo."""
    pytest.importorskip("openvino")
    path = upstream(models_dir, name)
    photo = set5("butterfly")
    reference = load_engine(ModelConfig(engine="opencv", path=path), OFF, 1).upscale(photo)
    out = load_engine(ModelConfig(path=path), OFF, 2).upscale(photo)
    assert psnr(out, reference) >= 45.0
    assert int(np.abs(out.astype(np.int16) - reference.astype(np.int16)).max()) <= 8


def test_default_precision_keeps_the_default_models_quality() -> None:
    """bf16 (the openvino default) loses < 0.05 dB against f32 for srwatch's own x3 model (Set5 butterfly)."""
    pytest.importorskip("openvino")
    model = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"
    hr = set5("butterfly")
    hr = hr[: hr.shape[0] // 3 * 3, : hr.shape[1] // 3 * 3]
    lr = cv2.resize(hr, (hr.shape[1] // 3, hr.shape[0] // 3), interpolation=cv2.INTER_AREA)
    f32 = load_engine(ModelConfig(path=model, precision="f32"), OFF, 2).upscale(lr)
    auto = load_engine(ModelConfig(path=model), OFF, 2).upscale(lr)
    assert abs(psnr(auto, hr) - psnr(f32, hr)) < 0.05


def test_openvino_memory_stays_flat_over_many_input_sizes() -> None:
    """Every photo a different size must not grow a worker without bound (the 30-minute soak found
    +1.2 MB per distinct size). In a fresh process: oneDNN reads its cache capacity when it loads."""
    pytest.importorskip("openvino")
    import subprocess
    import sys

    code = """
import numpy as np
from pathlib import Path
from srwatch.config import ModelConfig, TileConfig
from srwatch.engine import load_engine
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
eng = load_engine(ModelConfig(path=Path("models/EDSR-srwatch_x3.onnx")), TileConfig(size="off"), 1)
rng = np.random.default_rng(0)
sizes = [tuple(rng.integers(64, 161, 2)) for _ in range(90)]
for h, w in sizes[:30]:
    eng.upscale(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
start = rss()
for h, w in sizes[30:]:
    eng.upscale(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
print(rss() - start)
"""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 25, f"RSS grew {growth_mb:.0f} MB over 60 more input sizes (about 70 MB without the cache caps)"


def test_openvino_pads_a_colour_input_to_aligned_sizes_and_crops_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unaligned input of 256x256 pixels or more runs padded to multiples of 16 (up to 2x
    faster, benchmarks/README.md "Aligned sizes"): same size out, the same pixels away from the
    bottom and right edges, and close everywhere."""
    pytest.importorskip("openvino")
    from srwatch.engine import openvino as ovm

    model = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"
    engine = load_engine(ModelConfig(path=model, engine="openvino"), OFF, 2)
    img = np.ascontiguousarray(set5("baby")[:281, :358])  # 281 x 358: neither side a multiple of 16
    seen: list[tuple[int, ...]] = []
    run = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda blob: (seen.append(blob.shape), run(blob))[1])
    padded = engine.upscale(img)
    assert seen == [(1, 3, 288, 368)]
    assert padded.shape == (281 * 3, 358 * 3, 3)
    monkeypatch.setattr(ovm, "ALIGN", 1)
    plain = engine.upscale(img)
    assert seen[-1] == (1, 3, 281, 358)
    interior = (slice(0, 200 * 3), slice(0, 280 * 3))  # far from the padded edges
    assert np.array_equal(padded[interior], plain[interior])
    assert psnr(padded, plain) >= 40.0
    small = np.ascontiguousarray(img[:100, :150])  # under ALIGN_FROM_PIXELS: as it is
    monkeypatch.setattr(ovm, "ALIGN", 16)
    engine.upscale(small)
    assert seen[-1] == (1, 3, 100, 150)


def test_openvino_auto_tiles_stop_where_the_cache_runs_out(models_dir: Path) -> None:
    """tile.size auto: the largest tile that fits max_memory_mb, and with OpenVINO no larger
    than runs at full speed per pixel (FSRCNN_x3 on 2000x2000: 0.80 s in 784-px tiles, 0.58 s
    in 376). Other engines were not measured: the memory rule alone."""
    pytest.importorskip("openvino")
    path = upstream(models_dir, "FSRCNN_x3.pb")
    by_memory = load_engine(ModelConfig(path=path, engine="opencv"), TileConfig(), 1)
    capped = load_engine(ModelConfig(path=path, engine="openvino"), TileConfig(), 1)
    assert by_memory.tile_size == tiling.auto_tile_size(by_memory.bytes_per_input_pixel(), 1024, 12) > 448
    assert capped.tile_size == tiling.cache_tile_size(capped.measured_widest, 12) == 448
    tight = load_engine(ModelConfig(path=path, engine="openvino"), TileConfig(max_memory_mb=64), 1)
    assert tight.tile_size == tiling.auto_tile_size(tight.bytes_per_input_pixel(), 64, 12) < 448  # memory still rules


def test_openvino_runs_one_piece_images_on_fewer_threads_while_other_workers_are_busy() -> None:
    """The auto layout's threads per file: one while others are busy, both alone; a tiled image keeps both."""
    pytest.importorskip("openvino")
    model = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"
    engine = load_engine(ModelConfig(path=model, engine="openvino"), TileConfig(size=96, overlap=8), 2)
    busy = [False]
    engine.prepare_crowded(1, lambda: busy[0])
    rng = np.random.default_rng(5)
    small = cv2.GaussianBlur(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8), (5, 5), 0)
    large = cv2.resize(small, (200, 180), interpolation=cv2.INTER_CUBIC)  # several 96-px tiles

    def run(img: np.ndarray, hint: bool = False) -> tuple[np.ndarray, set[int]]:
        engine.start_job(hint)
        return engine.upscale(img), set(engine.threads_used)

    alone, used = run(small)
    assert used == {2}
    busy[0] = True
    crowded, used = run(small)
    assert used == {1}
    assert np.abs(alone.astype(int) - crowded.astype(int)).max() <= 1  # the same network, summed in another order
    busy[0] = False
    assert run(small, hint=True)[1] == {1}  # files were waiting when it was sent
    assert run(small)[1] == {2}  # the hint is for that file only
    busy[0] = True
    assert run(large)[1] == {2}
    # Engines that cannot switch keep their one thread count.
    fixed = load_engine(ModelConfig(path=model, engine="opencv"), OFF, 2)
    fixed.prepare_crowded(1, lambda: True)
    fixed.start_job(True)
    fixed.upscale(small)
    assert fixed.threads_used == {2} and fixed.crowded_threads is None
