"""Images: sniffing, limits, corrupt inputs, image kinds, metadata and encoding."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps

from conftest import set5
from srwatch import images
from srwatch.config import LimitsConfig, OutputConfig
from srwatch.errors import CorruptImage, EmptyFile, NotAnImage, TooManyPixels, UnsupportedImage

LIMITS = LimitsConfig()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """64x48 BGR crop of a real photo."""
    return np.ascontiguousarray(set5("butterfly")[100:148, 90:154])


def png_bytes(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pillow_bytes(im: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION] = value
    exif[271] = "srwatch-test"  # Make
    return exif.tobytes()


# --- what is refused, and how -------------------------------------------------------------------


def test_zero_bytes_is_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyFile):
        images.read_image(write(tmp_path, "a.png", b""), LIMITS)


def test_text_named_png_is_not_an_image(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.png", b"hello, this is a text file\n" * 20)
    with pytest.raises(NotAnImage):
        images.read_image(path, LIMITS)
    with pytest.raises(NotAnImage):
        images.probe(path, LIMITS)


def test_truncated_png_is_corrupt(tmp_path: Path, photo: np.ndarray) -> None:
    data = png_bytes(photo)
    with pytest.raises(CorruptImage):
        images.read_image(write(tmp_path, "t.png", data[: len(data) * 2 // 3]), LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_with_corrupted_idat_is_corrupt(tmp_path: Path, photo: np.ndarray) -> None:
    data = bytearray(png_bytes(photo))
    start = data.index(b"IDAT") + 4
    data[start + 200] ^= 0x01  # one flipped bit inside the compressed pixel data
    with pytest.raises(CorruptImage):
        images.read_image(write(tmp_path, "c.png", bytes(data)), LIMITS)


def test_png_with_damaged_header_is_corrupt_not_other(tmp_path: Path, photo: np.ndarray) -> None:
    data = png_bytes(photo)[:20]  # signature and half an IHDR
    with pytest.raises(CorruptImage):
        images.read_image(write(tmp_path, "h.png", data), LIMITS)


def test_truncated_jpeg_is_corrupt(tmp_path: Path, photo: np.ndarray) -> None:
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    with pytest.raises(CorruptImage):
        images.read_image(write(tmp_path, "t.jpg", data[: len(data) // 2]), LIMITS)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header announces width x height (an IDAT of a few bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_too_many_pixels_refused_from_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.png", bomb_png(200_000, 200_000))  # 40 gigapixels, 100 bytes
    with pytest.raises(TooManyPixels, match="limits.max_pixels"):
        images.read_image(path, LIMITS)
    with pytest.raises(TooManyPixels):
        images.probe(path, LimitsConfig(max_pixels=1000))


def test_file_size_limit_before_reading(tmp_path: Path, photo: np.ndarray) -> None:
    path = write(tmp_path, "big.png", png_bytes(photo))
    with pytest.raises(TooManyPixels, match="limits.max_file_mb"):
        images.read_image(path, LimitsConfig(max_file_mb=0.001))


def test_animated_gif_and_multipage_tiff_are_unsupported(tmp_path: Path, photo: np.ndarray) -> None:
    frames = [Image.fromarray(photo[..., ::-1]), Image.fromarray(photo)]
    gif = pillow_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    tiff = pillow_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    apng = pillow_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:])
    for name, data in (("a.gif", gif), ("a.tiff", tiff), ("a.png", apng)):
        with pytest.raises(UnsupportedImage) as info:
            images.read_image(write(tmp_path, name, data), LIMITS)
        assert info.value.reason == "unsupported"


# --- image kinds --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, same", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tiff"), ("BMP", "png"), ("GIF", "png")])
def test_formats_are_sniffed_and_read(tmp_path: Path, photo: np.ndarray, fmt: str, same: str) -> None:
    data = pillow_bytes(Image.fromarray(photo[..., ::-1]), fmt)
    decoded = images.read_image(write(tmp_path, "no-extension", data), LIMITS)
    assert decoded.info.format == fmt
    assert decoded.pixels.shape == photo.shape and decoded.pixels.dtype == np.uint8
    assert images.output_format(decoded, OutputConfig()) == same
    if fmt in ("PNG", "BMP", "TIFF"):
        assert np.array_equal(decoded.pixels, photo)  # lossless, and in BGR order


def test_grayscale_stays_grayscale(tmp_path: Path, photo: np.ndarray) -> None:
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    decoded = images.read_image(write(tmp_path, "g.png", png_bytes(gray)), LIMITS)
    assert decoded.pixels.ndim == 2 and np.array_equal(decoded.pixels, gray)
    encoded = images.encode_image(decoded.pixels, decoded, OutputConfig())
    assert Image.open(io.BytesIO(encoded.data)).mode == "L"


def test_16bit_png_is_read_and_written_in_16_bits(tmp_path: Path, photo: np.ndarray) -> None:
    deep = photo.astype(np.uint16) * 257 + 100
    decoded = images.read_image(write(tmp_path, "d.png", png_bytes(deep)), LIMITS)
    assert decoded.info.bit_depth == 16 and decoded.pixels.dtype == np.uint16
    assert np.array_equal(decoded.pixels, deep)
    encoded = images.encode_image(decoded.pixels, decoded, OutputConfig())
    back = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, deep)


def test_palette_png_with_transparency_becomes_rgba(tmp_path: Path, photo: np.ndarray) -> None:
    im = Image.fromarray(photo[..., ::-1]).quantize(16)
    index = np.asarray(im)
    transparent = int(index[0, 0])
    data = pillow_bytes(im, "PNG", transparency=transparent)
    decoded = images.read_image(write(tmp_path, "p.png", data), LIMITS)
    assert decoded.pixels.shape == photo.shape[:2] + (4,)
    alpha = decoded.pixels[..., 3]
    assert np.array_equal(alpha == 0, index == transparent)


def test_exif_orientation_applied_and_reset(tmp_path: Path, photo: np.ndarray) -> None:
    im = Image.fromarray(photo[..., ::-1])
    data = pillow_bytes(im, "JPEG", quality=95, exif=exif_with_orientation(6))
    decoded = images.read_image(write(tmp_path, "r.jpg", data), LIMITS)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))[..., ::-1]
    assert decoded.pixels.shape == (photo.shape[1], photo.shape[0], 3)
    assert np.array_equal(decoded.pixels, upright)
    assert decoded.size == (photo.shape[0], photo.shape[1])
    encoded = images.encode_image(decoded.pixels, decoded, OutputConfig())
    exif = Image.open(io.BytesIO(encoded.data)).getexif()
    assert exif[images.ORIENTATION] == 1 and exif[271] == "srwatch-test"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(orientation: int) -> None:
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[images.ORIENTATION] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(images.apply_orientation(img, orientation), expected)


@pytest.mark.parametrize("orientation", [3, 6])
@pytest.mark.parametrize("deep", [False, True])
def test_tiff_orientation_applied_once(tmp_path: Path, photo: np.ndarray, orientation: int, deep: bool) -> None:
    """Pillow and OpenCV versions differ in orienting TIFFs themselves; the result must not."""
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    stored = gray.astype(np.uint16) * 257 if deep else gray
    exif = Image.Exif()
    exif[images.ORIENTATION] = orientation
    data = pillow_bytes(Image.fromarray(stored), "TIFF", exif=exif)
    decoded = images.read_image(write(tmp_path, "o.tif", data), LIMITS)
    assert decoded.pixels.dtype == stored.dtype
    assert np.array_equal(decoded.pixels, images.apply_orientation(stored, orientation))


def test_reset_orientation_keeps_other_bytes() -> None:
    raw = exif_with_orientation(8)
    out = images.reset_orientation(raw)
    assert len(out) == len(raw)
    assert sum(a != b for a, b in zip(raw, out)) == 1
    exif = Image.Exif()
    exif.load(out)
    assert exif[images.ORIENTATION] == 1


def test_icc_tagged_jpeg_keeps_icc(tmp_path: Path, photo: np.ndarray) -> None:
    icc = srgb_icc()
    data = pillow_bytes(Image.fromarray(photo[..., ::-1]), "JPEG", icc_profile=icc)
    decoded = images.read_image(write(tmp_path, "icc.jpg", data), LIMITS)
    assert decoded.icc == icc
    for fmt in ("same", "png", "webp", "tiff"):
        encoded = images.encode_image(decoded.pixels, decoded, OutputConfig(format=fmt))
        assert Image.open(io.BytesIO(encoded.data)).info.get("icc_profile") == icc, fmt
    stripped = images.encode_image(decoded.pixels, decoded, OutputConfig(keep_metadata=False))
    assert "icc_profile" not in Image.open(io.BytesIO(stripped.data)).info


def test_rgba_never_becomes_jpeg(tmp_path: Path, photo: np.ndarray) -> None:
    bgra = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    decoded = images.read_image(write(tmp_path, "a.png", png_bytes(bgra)), LIMITS)
    encoded = images.encode_image(decoded.pixels, decoded, OutputConfig(format="jpg"))
    assert encoded.ext == ".png"
    assert any("PNG instead of JPEG" in note for note in encoded.notes)
    assert Image.open(io.BytesIO(encoded.data)).mode == "RGBA"


def test_16bit_png_keeps_icc_and_exif(tmp_path: Path, photo: np.ndarray) -> None:
    deep = photo.astype(np.uint16) * 257
    icc = srgb_icc()
    tagged = images.add_png_metadata(png_bytes(deep), icc, exif_with_orientation(3))
    assert Image.open(io.BytesIO(tagged)).info.get("icc_profile") == icc  # a reader other than ours
    decoded = images.read_image(write(tmp_path, "d.png", tagged), LIMITS)
    assert decoded.icc == icc and decoded.pixels.dtype == np.uint16
    assert np.array_equal(decoded.pixels, cv2.rotate(deep, cv2.ROTATE_180))
    encoded = images.encode_image(decoded.pixels, decoded, OutputConfig())
    out = Image.open(io.BytesIO(encoded.data))
    assert out.info.get("icc_profile") == icc
    assert out.getexif()[images.ORIENTATION] == 1 and out.getexif()[271] == "srwatch-test"
    back = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, decoded.pixels)
