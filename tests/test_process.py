"""Processor end to end (real model, real files), the result cache, and error wrapping."""
from __future__ import annotations

import errno
import io
import multiprocessing
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import psnr, require, set5
from srwatch.cache import CachedResult, ResultCache
from srwatch.config import Config
from srwatch import images
from srwatch.errors import (
    CorruptImage, JobError, LinkRefused, ModelError, NotAFile, NotAnImage, OutputError, StorageError, TooManyPixels,
)
from srwatch.process import Processor, preshrink

MODEL = "FSRCNN_x2.pb"


def make_config(tmp_path: Path, model: Path, **sections: Any) -> Config:
    """A valid Config with folders under tmp_path; the opencv engine, whose results equal dnn_superres."""
    paths = {name: str(tmp_path / name) for name in ("inbox", "outbox", "quarantine", "archive")}
    raw: dict[str, Any] = {"paths": paths, "model": {"path": str(model), "engine": "opencv"}, "tile": {"size": "off"}}
    raw.update(sections)
    return Config.model_validate(raw)


@pytest.fixture()
def model(models_dir: Path) -> Path:
    return require(models_dir / MODEL)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(set5("head")[100:148, 90:154])


def save_png(path: Path, pixels: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), pixels)
    return path


def reference(model: Path, img: np.ndarray) -> np.ndarray:
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(model))
    sr.setModel("fsrcnn", 2)
    return sr.upsample(img)


def test_png_end_to_end_equals_dnn_superres(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    processor = Processor(make_config(tmp_path, model), threads=1)
    assert processor.scale == 2
    rendered = processor.process(save_png(tmp_path / "in.png", photo))
    assert rendered.ext == ".png" and not rendered.cached
    assert rendered.input_size == (64, 48) and rendered.output_size == (128, 96)
    out = cv2.imdecode(np.frombuffer(rendered.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(out, reference(model, photo))


def test_rgba_alpha_survives_and_jpeg_becomes_png(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    alpha = np.tile(np.linspace(0, 255, photo.shape[1], dtype=np.uint8), (photo.shape[0], 1))
    bgra = np.dstack([photo, alpha])
    cfg = make_config(tmp_path, model, output={"format": "jpg"})
    rendered = Processor(cfg, threads=1).process(save_png(tmp_path / "a.png", bgra))
    assert rendered.ext == ".png"
    assert any("instead of JPEG" in note for note in rendered.notes)
    out = cv2.imdecode(np.frombuffer(rendered.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.shape == (96, 128, 4)
    expected_alpha = cv2.resize(alpha, (128, 96), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(out[..., 3], expected_alpha)
    assert np.array_equal(out[..., :3], reference(model, photo))


def test_grayscale_and_16bit_outputs(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    processor = Processor(make_config(tmp_path, model), threads=1)
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    rendered = processor.process(save_png(tmp_path / "g.png", gray))
    assert Image.open(io.BytesIO(rendered.data)).mode == "L"
    deep = photo.astype(np.uint16) * 257
    rendered = processor.process(save_png(tmp_path / "d.png", deep))
    out = cv2.imdecode(np.frombuffer(rendered.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (96, 128, 3)
    assert psnr(out, reference(model, photo).astype(np.uint16) * 257) > 40.0


def test_palette_exif_and_icc_inputs(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    processor = Processor(make_config(tmp_path, model), threads=1)
    rgb = Image.fromarray(photo[..., ::-1])

    palette = rgb.quantize(16)
    index = np.asarray(palette)
    palette.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    out = Image.open(io.BytesIO(processor.process(tmp_path / "p.png").data))
    assert out.mode == "RGBA" and out.size == (128, 96)
    alpha = np.asarray(out)[..., 3]
    assert alpha[0, 0] == 0 and alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] in (0, 255)

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 counter-clockwise to view
    rgb.save(tmp_path / "r.jpg", quality=95, icc_profile=icc, exif=exif.tobytes())
    rendered = processor.process(tmp_path / "r.jpg")
    assert rendered.ext == ".jpg" and rendered.input_size == (48, 64) and rendered.output_size == (96, 128)
    out = Image.open(io.BytesIO(rendered.data))
    assert out.size == (96, 128) and out.info.get("icc_profile") == icc
    assert out.getexif()[0x0112] == 1
    # The pixels are the model's result on the upright photo (JPEG-decoded, JPEG-encoded again).
    upright = cv2.rotate(photo, cv2.ROTATE_90_COUNTERCLOCKWISE)
    assert psnr(np.asarray(out)[..., ::-1], reference(model, upright)) > 30.0


def test_preshrink_limits_the_longer_side(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    cfg = make_config(tmp_path, model, preshrink={"max_side": 32})
    rendered = Processor(cfg, threads=1).process(save_png(tmp_path / "big.png", photo))
    assert rendered.input_size == (64, 48) and rendered.output_size == (64, 48)
    assert any("preshrunk" in note for note in rendered.notes)
    pixels, note = preshrink(photo, 0)
    assert pixels is photo and note is None


def test_cache_hit_returns_same_bytes_without_the_model(
    tmp_path: Path, model: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, model, cache={"enabled": True, "max_mb": 8})
    src = save_png(tmp_path / "in.png", photo)
    first = Processor(cfg, threads=1).process(src)
    assert not first.cached

    processor = Processor(cfg, threads=1)  # another worker sharing the cache folder

    def no_model(img: np.ndarray) -> np.ndarray:
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(processor.engine, "upscale", no_model)
    copy = tmp_path / "copy-with-another-name.png"
    copy.write_bytes(src.read_bytes())
    second = processor.process(copy)
    assert second.cached and second.data == first.data
    assert (second.ext, second.input_size, second.output_size, second.notes) == (
        first.ext, first.input_size, first.output_size, first.notes)

    # Other settings, other key: the model runs.
    other = Processor(make_config(tmp_path, model, cache={"enabled": True}, output={"png_compression": 9}), threads=1)
    assert not other.process(src).cached


def test_cache_is_bounded_lru(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_mb=1)
    blob = os.urandom(300 * 1024)
    for i in range(3):
        cache.put(f"{i:064x}", CachedResult(blob, ".png", (1, 1), (2, 2), ()))
    os.utime(cache.path_for(f"{0:064x}"), (1, 1))  # entry 0 is the least recently used
    assert cache.get(f"{1:064x}") is not None
    cache.put(f"{3:064x}", CachedResult(blob, ".png", (1, 1), (2, 2), ()))
    sizes = [e.stat().st_size for e in cache.files(".entry")]
    assert sum(sizes) <= 2**20
    assert cache.get(f"{0:064x}") is None and cache.get(f"{3:064x}") is not None


def test_damaged_cache_entry_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_mb=1)
    key = "ab" * 32
    cache.put(key, CachedResult(b"data", ".png", (1, 1), (2, 2), ("note",)))
    assert cache.get(key).notes == ("note",)
    path = cache.path_for(key)
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    assert cache.get(key) is None and not path.exists()


def _hammer(folder: str, worker: int) -> None:
    cache = ResultCache(Path(folder), max_mb=1)
    for i in range(30):
        key = f"{i % 5:064x}"
        cache.put(key, CachedResult(bytes([i % 5]) * 100_000, ".png", (1, 1), (2, 2), ()))
        hit = cache.get(key)
        assert hit is None or hit.data == bytes([i % 5]) * 100_000


def test_cache_shared_by_processes(tmp_path: Path) -> None:
    # spawn, as the daemon's workers: a fork of this test process (which holds OpenVINO's thread
    # pools from earlier tests) can deadlock in the child before it runs a line of the cache.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "cache"), n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert not list((tmp_path / "cache").glob("*/*.tmp"))


def test_only_job_errors_come_out(tmp_path: Path, model: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    processor = Processor(make_config(tmp_path, model), threads=1)
    text = tmp_path / "x.png"
    text.write_text("not an image")
    with pytest.raises(NotAnImage):
        processor.process(text)
    data = save_png(tmp_path / "ok.png", photo).read_bytes()
    truncated = tmp_path / "t.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage):
        processor.process(truncated)
    with pytest.raises(JobError):
        processor.process(tmp_path / "missing.png")

    def boom(*args: object) -> None:
        raise RuntimeError("runtime fell over")

    src = tmp_path / "ok.png"
    monkeypatch.setattr(processor.engine, "upscale_whole", boom)
    with pytest.raises(ModelError, match="runtime fell over"):
        processor.process(src)
    monkeypatch.undo()
    monkeypatch.setattr("srwatch.images._encode_8bit", boom)
    with pytest.raises(OutputError):
        processor.process(src)


# --- limits.max_output_pixels: from the header, before decoding -----------------------------------


def forbid(monkeypatch: pytest.MonkeyPatch, target: str, what: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran")

    monkeypatch.setattr(target, refuse)


def test_output_pixels_refused_before_decoding(
    tmp_path: Path, model: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = save_png(tmp_path / "in.png", photo)  # 64x48 -> 128x96 = 12288 output pixels at x2
    assert Processor(make_config(tmp_path, model, limits={"max_output_pixels": 128 * 96}), 1).process(src)
    processor = Processor(make_config(tmp_path, model, limits={"max_output_pixels": 128 * 96 - 1}), 1)
    forbid(monkeypatch, "srwatch.process.decode_image", "decoding")
    with pytest.raises(TooManyPixels, match=r"limits\.max_output_pixels") as info:
        processor.process(src)
    assert info.value.reason == "too_large" and "128x96" in str(info.value)


def test_output_pixels_count_after_preshrink(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    src = save_png(tmp_path / "in.png", photo)
    cfg = make_config(tmp_path, model, limits={"max_output_pixels": 64 * 48}, preshrink={"max_side": 32})
    processor = Processor(cfg, 1)
    assert processor.output_size(64, 48) == (64, 48)  # preshrunk to 32x24, then x2
    rendered = processor.process(src)
    assert rendered.output_size == (64, 48)
    tight = make_config(tmp_path, model, limits={"max_output_pixels": 64 * 48 - 1}, preshrink={"max_side": 32})
    with pytest.raises(TooManyPixels, match="after preshrink"):
        Processor(tight, 1).process(src)


def test_output_size_follows_exif_orientation(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo[..., ::-1]).save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    processor = Processor(make_config(tmp_path, model, preshrink={"max_side": 40}), 1)
    info = images.read_header((tmp_path / "r.jpg").read_bytes(), processor.cfg.limits)
    planned = processor.check_output_size(info)
    rendered = processor.process(tmp_path / "r.jpg")
    assert planned == rendered.output_size == (30 * 2, 40 * 2)


# --- reading the claimed file ----------------------------------------------------------------------


def test_links_and_special_files_are_job_errors(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    processor = Processor(make_config(tmp_path, model), 1)
    target = save_png(tmp_path / "target.png", photo)
    (tmp_path / "link.png").symlink_to(target)
    with pytest.raises(LinkRefused):
        processor.process(tmp_path / "link.png")
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(NotAFile):
        processor.process(tmp_path / "fifo.png")


def test_max_bytes_is_passed_through(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    processor = Processor(make_config(tmp_path, model), 1)
    src = save_png(tmp_path / "in.png", photo)
    size = src.stat().st_size
    with open(src, "ab") as f:  # grown after the claim: never read
        f.write(os.urandom(4096))
    assert processor.process(src, max_bytes=size).output_size == (128, 96)
    with pytest.raises(CorruptImage):
        processor.process(src, max_bytes=size // 2)


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.ENOSPC, errno.EPERM])
def test_environmental_read_errors_are_storage_errors(
    tmp_path: Path, model: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    processor = Processor(make_config(tmp_path, model), 1)
    src = save_png(tmp_path / "in.png", photo)

    def failing(*args: object, **kwargs: object) -> bytes:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("srwatch.process.read_input", failing)
    with pytest.raises(StorageError) as info:
        processor.process(src)
    assert info.value.errno == code and not isinstance(info.value, JobError)


def test_a_vanished_file_is_a_job_error_not_storage(tmp_path: Path, model: Path) -> None:
    processor = Processor(make_config(tmp_path, model), 1)
    with pytest.raises(JobError) as info:
        processor.process(tmp_path / "gone.png")
    assert not isinstance(info.value, StorageError)


# --- the output is planned before inference -------------------------------------------------------


def test_format_limit_planned_before_inference(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = np.ascontiguousarray(cv2.resize(set5("head"), (8200, 2)))  # x2: 16400 px, over WebP's 16383
    Image.fromarray(wide[..., ::-1]).save(tmp_path / "wide.webp", lossless=True)
    processor = Processor(make_config(tmp_path, model), 1)
    rendered = processor.process(tmp_path / "wide.webp")
    assert rendered.ext == ".png" and rendered.output_size == (16400, 4)
    assert any("instead of WebP" in note for note in rendered.notes)
    assert Image.open(io.BytesIO(rendered.data)).size == (16400, 4)

    # The plan comes before the model: a failing plan means the model never runs.
    def failing_plan(*args: object, **kwargs: object) -> None:
        raise ValueError("no plan")

    monkeypatch.setattr("srwatch.process.plan_output", failing_plan)
    forbid(monkeypatch, f"{type(processor.engine).__module__}.{type(processor.engine).__name__}.upscale", "inference")
    with pytest.raises(OutputError, match="no plan"):
        processor.process(tmp_path / "wide.webp")


def test_huge_exif_to_jpeg_is_dropped_not_failed(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    exif[270] = "z" * 100_000
    Image.fromarray(photo[..., ::-1]).save(tmp_path / "e.png", exif=exif.tobytes())
    rendered = Processor(make_config(tmp_path, model, output={"format": "jpg"}), 1).process(tmp_path / "e.png")
    assert rendered.ext == ".jpg" and any("EXIF" in note and "dropped" in note for note in rendered.notes)
    out = Image.open(io.BytesIO(rendered.data))
    assert out.size == (128, 96) and out.getexif()[0x0112] == 1
    upright = cv2.rotate(photo, cv2.ROTATE_180)
    assert psnr(np.asarray(out)[..., ::-1], reference(model, upright)) > 30.0


def test_gray_alpha_is_assembled_in_place(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    alpha = np.tile(np.linspace(0, 255, photo.shape[1], dtype=np.uint8), (photo.shape[0], 1))
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    rendered = Processor(make_config(tmp_path, model), 1).process(tmp_path / "la.png")
    out = np.asarray(Image.open(io.BytesIO(rendered.data)))
    assert out.shape == (96, 128, 2)
    assert np.array_equal(out[..., 0], reference(model, gray))
    assert np.array_equal(out[..., 1], cv2.resize(alpha, (128, 96), interpolation=cv2.INTER_CUBIC))


def test_tiled_rgba_equals_whole(tmp_path: Path, model: Path, photo: np.ndarray) -> None:
    """Colour written tile by tile into the RGBA result's colour channels, alpha into the last."""
    alpha = np.tile(np.linspace(0, 255, photo.shape[1], dtype=np.uint8), (photo.shape[0], 1))
    src = save_png(tmp_path / "a.png", np.dstack([photo, alpha]))
    whole = Processor(make_config(tmp_path, model), 1).process(src)
    tiled_cfg = make_config(tmp_path, model, tile={"size": 16, "overlap": 8})
    tiled = Processor(tiled_cfg, 1).process(src)
    a = cv2.imdecode(np.frombuffer(whole.data, np.uint8), cv2.IMREAD_UNCHANGED)
    b = cv2.imdecode(np.frombuffer(tiled.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert a.shape == b.shape == (96, 128, 4)
    assert np.array_equal(a[..., 3], b[..., 3])
    assert psnr(a[..., :3], b[..., :3]) >= 45.0
