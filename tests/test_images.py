"""Images: sniffing, limits, corrupt inputs, image kinds, metadata and encoding."""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps

from conftest import set5
from srwatch import images
from srwatch.config import LimitsConfig, OutputConfig
from srwatch.png import encode_png
from srwatch.errors import (
    CorruptImage, EmptyFile, LinkRefused, NotAFile, NotAnImage, OutputError, TooManyPixels, UnsupportedImage,
)

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
    tagged = encode_png(deep, 1, icc, exif_with_orientation(3))
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


# --- opening the claimed file: links, special files, the claimed size ----------------------------


@pytest.fixture()
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the run) if something blocks for 5 s, e.g. opening a FIFO."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("blocked: a FIFO was opened in blocking mode")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_link_is_refused_and_its_target_never_read(tmp_path: Path, photo: np.ndarray, no_hang: None) -> None:
    target = write(tmp_path, "target.png", png_bytes(photo))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    links = {"to-file.png": target, "dangling.png": tmp_path / "missing.png", "to-fifo.png": fifo}
    for name, where in links.items():
        link = tmp_path / name
        link.symlink_to(where)
        with pytest.raises(LinkRefused) as info:
            images.read_input(link, LIMITS)
        assert info.value.reason == "link"
        with pytest.raises(LinkRefused):
            images.probe(link, LIMITS)
    # The target was never opened through the link: its access time did not move.
    os.utime(target, (1_000_000, os.stat(target).st_mtime))
    with pytest.raises(LinkRefused):
        images.read_input(tmp_path / "to-file.png", LIMITS)
    assert os.stat(target).st_atime == 1_000_000


def test_special_files_are_refused_without_blocking(tmp_path: Path, no_hang: None) -> None:
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)  # no writer: a blocking open would wait for ever
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path, kind in ((fifo, "FIFO"), (folder, "folder"), (Path("/dev/null"), "character device")):
        with pytest.raises(NotAFile, match=kind) as info:
            images.read_input(path, LIMITS)
        assert info.value.reason == "not_a_file"
        with pytest.raises(NotAFile):
            images.probe(path, LIMITS)


def test_a_socket_is_refused(no_hang: None) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are limited to ~100 bytes
        path = Path(short) / "s.png"
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(str(path))
            with pytest.raises(NotAFile, match="socket"):
                images.read_input(path, LIMITS)
        finally:
            server.close()


def test_read_input_reads_at_most_the_claimed_size(tmp_path: Path, photo: np.ndarray) -> None:
    data = png_bytes(photo)
    path = write(tmp_path, "grows.png", data)
    assert images.read_input(path, LIMITS) == data
    assert images.read_input(path, LIMITS, max_bytes=len(data)) == data
    with open(path, "ab") as f:  # a writer still appending after the claim
        f.write(b"\0" * 100_000)
    assert images.read_input(path, LIMITS, max_bytes=len(data)) == data
    assert images.read_input(path, LIMITS, max_bytes=10) == data[:10]
    # A file that shrank since the claim gives what is there: the decoder finds it truncated.
    shrunk = write(tmp_path, "shrunk.png", data[: len(data) // 2])
    assert images.read_input(shrunk, LIMITS, max_bytes=len(data)) == data[: len(data) // 2]
    with pytest.raises(CorruptImage):
        images.decode_image(images.read_input(shrunk, LIMITS, max_bytes=len(data)), LIMITS)
    with pytest.raises(EmptyFile):
        images.read_input(path, LIMITS, max_bytes=0)


def test_the_size_limit_applies_to_what_would_be_read(tmp_path: Path) -> None:
    path = write(tmp_path, "big.bin", b"x" * 300_000)
    limits = LimitsConfig(max_file_mb=0.25)
    with pytest.raises(TooManyPixels, match="limits.max_file_mb"):
        images.read_input(path, limits)
    assert images.read_input(path, limits, max_bytes=1000) == b"x" * 1000


# --- headers: facts without decoding -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_read_header_decodes_nothing(monkeypatch: pytest.MonkeyPatch, photo: np.ndarray, fmt: str) -> None:
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6
    options = {"exif": exif.tobytes()} if fmt in ("PNG", "JPEG", "WEBP") else {}
    data = pillow_bytes(Image.fromarray(photo[..., ::-1]), fmt, **options)

    def no_decoding(self: object) -> None:
        raise AssertionError("pixels were decoded while reading the header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    info = images.read_header(data, LIMITS)
    assert (info.format, info.width, info.height) == (fmt, 64, 48)
    expected = 6 if options else 1
    assert info.orientation == expected
    assert info.oriented_size == ((48, 64) if expected == 6 else (64, 48))


def test_png_exif_after_idat_is_found_without_decoding_twice(photo: np.ndarray) -> None:
    """eXIf after IDAT: not looked for in the header (it would decode), applied when decoding."""
    data = png_bytes(photo)
    iend = data.rindex(b"IEND") - 4
    exif = exif_with_orientation(6)
    chunk = struct.pack(">I", len(exif) - 6) + b"eXIf" + exif[6:] + struct.pack(">I", zlib.crc32(b"eXIf" + exif[6:]))
    late = data[:iend] + chunk + data[iend:]
    assert images.read_header(late, LIMITS).orientation == 1
    decoded = images.decode_image(late, LIMITS)
    assert decoded.info.orientation == 6
    assert np.array_equal(decoded.pixels, cv2.rotate(photo, cv2.ROTATE_90_CLOCKWISE))
    assert decoded.exif is not None and images.reset_orientation(decoded.exif) == decoded.exif
    deep = add_late_exif(png_bytes(photo.astype(np.uint16) * 257), exif)
    decoded = images.decode_image(deep, LIMITS)
    assert decoded.pixels.dtype == np.uint16 and decoded.info.orientation == 6
    assert decoded.pixels.shape[:2] == (64, 48)


def add_late_exif(data: bytes, exif: bytes) -> bytes:
    iend = data.rindex(b"IEND") - 4
    body = exif[6:]
    return data[:iend] + struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body)) + data[iend:]


def test_webp_bomb_refused_before_the_decoder_allocates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's WebP decoder allocates the canvas when it opens a file: the size is checked first."""
    from PIL import WebPImagePlugin

    def no_decoder(*args: object) -> None:
        raise AssertionError("the WebP decoder was created for a header bomb")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", no_decoder)
    bits = (16384 - 1) | ((16384 - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + bytes(11)
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    bomb = b"RIFF" + struct.pack("<I", len(body)) + body
    assert images.webp_canvas(bomb) == (16384, 16384)
    with pytest.raises(TooManyPixels, match="limits.max_pixels"):
        images.read_header(bomb, LIMITS)


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}, {"quality": 80, "exif": b"Exif\0\0II*\0\x08\0\0\0\0\0"}])
def test_webp_canvas_matches_pillow(photo: np.ndarray, options: dict) -> None:
    data = pillow_bytes(Image.fromarray(photo[..., ::-1]), "WEBP", **options)
    assert images.webp_canvas(data) == Image.open(io.BytesIO(data)).size == (64, 48)


def test_png_without_idat_is_corrupt_not_indexerror() -> None:
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(CorruptImage):
        images.decode_image(data, LIMITS)


# --- the output plan: format limits and metadata, before inference --------------------------------


def decoded_with(photo: np.ndarray, fmt: str, exif: bytes | None = None) -> images.Decoded:
    options = {"exif": exif} if exif else {}
    return images.decode_image(pillow_bytes(Image.fromarray(photo[..., ::-1]), fmt, **options), LIMITS)


@pytest.mark.parametrize(
    "fmt, limit", [("webp", images.MAX_SIDE["webp"]), ("jpg", images.MAX_SIDE["jpg"])]
)
def test_plan_falls_back_to_png_beyond_the_format_side_limit(photo: np.ndarray, fmt: str, limit: int) -> None:
    decoded = decoded_with(photo, "PNG")
    cfg = OutputConfig(format=fmt)
    for size in ((limit, 10), (10, limit)):
        plan = images.plan_output(decoded, size, cfg)
        assert plan.format == fmt and plan.notes == ()
    for size in ((limit + 1, 10), (10, limit + 1)):
        plan = images.plan_output(decoded, size, cfg)
        assert plan.format == "png" and plan.ext == ".png"
        assert len(plan.notes) == 1 and f"at most {limit} px per side" in plan.notes[0]


def test_the_side_limits_are_the_encoders(photo: np.ndarray) -> None:
    """One pixel more than MAX_SIDE fails in the encoder itself; the plan avoids that."""
    for fmt, pillow_format in (("webp", "WEBP"), ("jpg", "JPEG")):
        limit = images.MAX_SIDE[fmt]
        pillow_bytes(Image.new("RGB", (limit, 1)), pillow_format)
        with pytest.raises((OSError, ValueError)):
            pillow_bytes(Image.new("RGB", (limit + 1, 1)), pillow_format)
        decoded = decoded_with(photo, "PNG")
        wide = np.zeros((1, limit + 1, 3), np.uint8)
        encoded = images.encode_image(wide, decoded, OutputConfig(format=fmt))
        assert encoded.ext == ".png" and Image.open(io.BytesIO(encoded.data)).size == (limit + 1, 1)
        assert any("px per side" in note for note in encoded.notes)


def test_huge_exif_is_dropped_for_jpeg_only(photo: np.ndarray) -> None:
    big = Image.Exif()
    big[images.ORIENTATION] = 3
    big[271] = "srwatch-test"
    big[270] = "z" * 100_000
    decoded = decoded_with(photo, "PNG", big.tobytes())
    assert decoded.exif is not None and len(decoded.exif) > images.MAX_JPEG_EXIF
    size = (decoded.size[0] * 2, decoded.size[1] * 2)
    plan = images.plan_output(decoded, size, OutputConfig(format="jpg"))
    assert plan.format == "jpg" and len(plan.exif) <= images.MAX_JPEG_EXIF
    assert len(plan.notes) == 1 and "EXIF" in plan.notes[0] and "dropped" in plan.notes[0]
    for fmt in ("png", "webp", "tiff"):
        assert images.plan_output(decoded, size, OutputConfig(format=fmt)).exif == decoded.exif
    assert images.plan_output(decoded, size, OutputConfig(format="jpg", keep_metadata=False)).notes == ()
    # Encoding succeeds (Pillow refuses EXIF over one APP1 segment); the result says orientation 1.
    up = cv2.resize(decoded.pixels, size)
    encoded = images.encode_image(up, decoded, OutputConfig(format="jpg"), plan)
    assert encoded.ext == ".jpg" and plan.notes[0] in encoded.notes
    exif = Image.open(io.BytesIO(encoded.data)).getexif()
    assert exif[images.ORIENTATION] == 1 and 270 not in exif
    with pytest.raises(ValueError, match="EXIF data is too long"):
        pillow_bytes(Image.fromarray(up), "JPEG", exif=decoded.exif)


def test_alpha_plan_for_jpeg_is_png(tmp_path: Path, photo: np.ndarray) -> None:
    bgra = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    decoded = images.read_image(write(tmp_path, "a.png", png_bytes(bgra)), LIMITS)
    plan = images.plan_output(decoded, (128, 96), OutputConfig(format="jpg"))
    assert plan.format == "png" and "PNG instead of JPEG" in plan.notes[0]


def test_encode_replans_when_the_plan_does_not_fit_the_pixels(photo: np.ndarray) -> None:
    decoded = decoded_with(photo, "PNG")
    plan = images.plan_output(decoded, (10, 10), OutputConfig(format="webp"))
    wide = np.zeros((1, images.MAX_SIDE["webp"] + 1, 3), np.uint8)
    assert images.encode_image(wide, decoded, OutputConfig(format="webp"), plan).ext == ".png"


@pytest.mark.parametrize("channels", [0, 2, 3, 4])
def test_8bit_encode_is_exact_without_an_rgb_copy(photo: np.ndarray, channels: int) -> None:
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    alpha = np.tile(np.linspace(0, 255, photo.shape[1], dtype=np.uint8), (photo.shape[0], 1))
    pixels = {0: gray, 2: np.dstack([gray, alpha]), 3: photo, 4: np.dstack([photo, alpha])}[channels]
    decoded = decoded_with(photo, "PNG")
    encoded = images.encode_image(pixels, decoded, OutputConfig(format="png"))
    back = np.asarray(Image.open(io.BytesIO(encoded.data)))
    expected = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA) if channels == 4 else photo[..., ::-1] if channels == 3 else pixels
    assert np.array_equal(back, expected)


def test_to_8bit_rounds_every_value_as_before() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    reference = np.clip(np.rint(values.astype(np.float32) * np.float32(1.0 / 257.0)), 0, 255).astype(np.uint8)
    assert np.array_equal(images.to_8bit(values), reference)
