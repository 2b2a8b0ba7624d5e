"""srwatch's PNG writer (srwatch/png.py), read back by two other decoders: libpng through
OpenCV, and Pillow (which checks every chunk's CRC)."""
from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import set5
from srwatch import png
from srwatch.png import encode_png


def upscaled_photo() -> np.ndarray:
    """A 768x768 BGR image like the daemon's results: a Set5 crop upscaled x3 (smooth)."""
    return cv2.resize(np.ascontiguousarray(set5("baby")[:256, :256]), (768, 768), interpolation=cv2.INTER_CUBIC)


def opencv_reads(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


def pillow_reads(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()  # decodes the image data, checking the CRCs
    return im


def with_alpha(bgr: np.ndarray) -> np.ndarray:
    alpha = np.linspace(0, 255, bgr.shape[1], dtype=np.uint8)[None, :].repeat(bgr.shape[0], 0)
    return np.dstack([bgr, alpha])


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_colour_type_and_depth_reads_back_exactly(channels: int, depth: int) -> None:
    bgr = np.ascontiguousarray(set5("butterfly")[:70, :90])
    pixels = {1: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 3: bgr, 4: with_alpha(bgr)}.get(channels)
    if channels == 2:
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        pixels = np.dstack([gray, 255 - gray])
    if depth == 16:  # every 16-bit value, not just x257: both bytes of a sample must survive
        pixels = pixels.astype(np.uint16) * 251 + np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 251
    data = encode_png(pixels)
    im = pillow_reads(data)
    assert im.size == (90, 70)
    assert im.mode == {(1, 8): "L", (2, 8): "LA", (3, 8): "RGB", (4, 8): "RGBA", (1, 16): "I;16",
                       (2, 16): "RGBA", (3, 16): "RGB", (4, 16): "RGBA"}[(channels, depth)]
    if channels == 2:  # OpenCV reads gray+alpha as BGRA, Pillow 16-bit gray+alpha as RGBA
        assert np.array_equal(opencv_reads(data), pixels[..., [0, 0, 0, 1]])
    else:
        assert np.array_equal(opencv_reads(data), pixels)
    if depth == 8:
        expected = pixels[..., [2, 1, 0, 3][:channels]] if channels >= 3 else pixels  # BGR(A) -> RGB(A)
        assert np.array_equal(np.asarray(im), expected)


def test_a_single_channel_axis_is_gray() -> None:
    gray = cv2.cvtColor(np.ascontiguousarray(set5("bird")[:40, :50]), cv2.COLOR_BGR2GRAY)
    assert np.array_equal(opencv_reads(encode_png(gray[:, :, None])), gray)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4, 6, 9])
def test_every_level_reads_back(level: int) -> None:
    pixels = np.ascontiguousarray(set5("head")[:100, :120])
    data = encode_png(pixels, level)
    assert np.array_equal(opencv_reads(data), pixels)
    pillow_reads(data)


def test_rows_span_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter's row above crosses strip boundaries: one row per strip, and an odd strip size."""
    pixels = np.ascontiguousarray(set5("woman")[:57, :33])
    for strip_bytes in (1, 33 * 3 * 5 + 7):
        monkeypatch.setattr(png, "STRIP_BYTES", strip_bytes)
        assert np.array_equal(opencv_reads(encode_png(pixels)), pixels)


def test_a_large_result_reads_back() -> None:
    """Several default-sized strips (2400 bytes a row, 436 rows a strip), uneven last strip."""
    pixels = upscaled_photo()[:700, :800]
    assert np.array_equal(opencv_reads(encode_png(np.ascontiguousarray(pixels))), pixels)


def test_icc_and_exif_chunks_come_before_the_image_data() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[271] = "srwatch-test"
    pixels = np.ascontiguousarray(set5("baby")[:30, :40])
    data = encode_png(pixels, 1, icc, exif.tobytes())
    assert data.index(b"iCCP") < data.index(b"eXIf") < data.index(b"IDAT")
    im = pillow_reads(data)
    assert im.info.get("icc_profile") == icc
    assert im.getexif()[271] == "srwatch-test"
    assert np.array_equal(opencv_reads(data), pixels)


def test_the_image_data_is_one_valid_zlib_stream() -> None:
    pixels = np.ascontiguousarray(set5("bird")[:20, :20])
    data = encode_png(pixels)
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    raw = zlib.decompress(data[start + 4:start + 4 + length])
    rows = np.frombuffer(raw, np.uint8).reshape(20, 1 + 20 * 3)
    assert (rows[:, 0] == 2).all()  # every row Up-filtered


@pytest.mark.parametrize("pixels", [
    np.zeros((4, 4), np.float32),
    np.zeros((4, 4, 5), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    np.zeros((2, 2, 2, 2), np.uint8),
])
def test_what_png_cannot_hold_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(pixels)


def test_level_1_is_no_larger_than_libpng_at_level_1() -> None:
    """The fast writer must not buy its speed with size: within 3 % of libpng's level 1
    with its adaptive filters, on a result like the daemon's (measured: -1 % to +1 %)."""
    pixels = upscaled_photo()
    ours = len(encode_png(pixels, 1))
    ok, theirs = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    assert ours <= 1.03 * len(theirs), (ours, len(theirs))
