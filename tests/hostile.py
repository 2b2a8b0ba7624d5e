"""Bad and hostile inputs, generated in memory: what a watch folder can be handed.

    from hostile import HOSTILE, Case
    for case in HOSTILE:
        path = tmp_path / case.filename        # the name a file with these bytes arrives under
        path.write_bytes(case.data)
        ...                                    # case.expect: the quarantine reason, or None

``expect`` is the quarantine reason code (``srwatch.errors.REASON_CODES``) the file must end
in, or None when srwatch must process it successfully; for those, ``size`` is the input's
(width, height) as seen, EXIF orientation applied, and ``ext`` the output's extension with the
default ``output`` settings. The expectations assume the default limits and a x3 model (the
shipped default, models/EDSR-srwatch_x3.onnx): the IDAT bomb is refused by
limits.max_output_pixels, which depends on the scale.

Every case is a few bytes to a few hundred KB and the same bytes on every call (fixed seeds;
the encoders are Pillow's and OpenCV's). Nothing is written to disk here.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np
from PIL import Image, ImageCms

ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    """One input: its bytes and what srwatch must make of them."""

    name: str  # identifier, also the stem of ``filename``
    data: bytes
    expect: Optional[str]  # quarantine reason code, or None: processed successfully
    suffix: str = ".bin"  # the extension it arrives with (never trusted: content wins)
    size: Optional[tuple[int, int]] = None  # success only: (width, height) as seen
    ext: Optional[str] = None  # success only: the output's extension with output.format 'same'

    @property
    def filename(self) -> str:
        """The name the file arrives under in the inbox."""
        return self.name + self.suffix


# --- building blocks ----------------------------------------------------------------------------


def pixels(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 content: a gradient with noise, (H, W, C) RGB(A) order."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = (x * np.array([1.0, 0.5, 0.2] + [0.0] * (channels - 3))[:channels] + y * 0.4) % 256
    noise = rng.integers(0, 32, (height, width, channels))
    out = np.clip(base + noise, 0, 255).astype(np.uint8)
    if channels == 4:
        out[..., 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return out


def rgb(width: int = 20, height: int = 16, seed: int = 0) -> Image.Image:
    """A small RGB Pillow image."""
    return Image.fromarray(pixels(width, height, 3, seed), "RGB")


def save(im: Image.Image, fmt: str, **options: object) -> bytes:
    """Pillow-encoded bytes."""
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes, crc: Optional[int] = None) -> bytes:
    """A PNG chunk: length, type, body, CRC32 (of type + body unless given)."""
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(width: int, height: int, idat: bytes, depth: int = 8, colour: int = 2, extra: bytes = b"") -> bytes:
    """A PNG from its parts: IHDR for width x height, ``extra`` chunks, one IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zeros_deflated(size: int) -> bytes:
    """zlib stream of ``size`` zero bytes (about 1 KB per MB), built without holding them all."""
    compressor = zlib.compressobj(9)
    block = bytes(2**20)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    parts.append(compressor.compress(bytes(size % len(block))))
    parts.append(compressor.flush())
    return b"".join(parts)


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    """The first ``fraction`` of the bytes."""
    return data[: int(len(data) * fraction)]


def patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """The bytes with struct ``fmt`` of ``values`` written at ``offset``."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header says width x height (the scan data stays 16x16)."""
    data = save(rgb(16, 16), "JPEG", quality=80)
    sof = data.index(b"\xff\xc0")
    return patch(data, sof + 5, ">HH", height, width)


def tiff_with_size(width: int, height: int) -> bytes:
    """A small real TIFF whose IFD0 says width x height (LONG values, strips unchanged)."""
    data = bytearray(save(rgb(16, 16), "TIFF"))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            struct.pack_into("<HHII", data, entry, tag, 4, 1, value)  # LONG
    return bytes(data)


def tiff_ifd_loop() -> bytes:
    """A two-page TIFF whose second IFD points back to the first (an endless page chain)."""
    frames = [rgb(8, 8, 1), rgb(8, 8, 2)]
    data = bytearray(save(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    (first,) = struct.unpack_from("<I", data, 4)
    ifd = first
    while True:  # walk to the last IFD and point its 'next' at the first
        (count,) = struct.unpack_from("<H", data, ifd)
        next_at = ifd + 2 + 12 * count
        (nxt,) = struct.unpack_from("<I", data, next_at)
        if nxt == 0:
            struct.pack_into("<I", data, next_at, first)
            return bytes(data)
        ifd = nxt


def webp_lossless_header(width: int, height: int) -> bytes:
    """A WebP (VP8L) whose bitstream header says width x height, followed by almost nothing."""
    bits = (width - 1) | ((height - 1) << 14) | (0 << 28)  # alpha hint 0, version 0
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 11
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP whose header says width x height, with 64 bytes of pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixel_data = bytes(64)
    head = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixel_data), 0, 0, 14 + len(info))
    return head + info + pixel_data


def gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height, holding one 1x1 frame."""
    data = save(Image.new("P", (1, 1)), "GIF")
    return patch(data, 6, "<HH", width, height)


def png_bad_crc() -> bytes:
    """A valid small PNG with one IDAT CRC off by one."""
    data = bytearray(save(rgb(), "PNG"))
    at = data.index(b"IDAT")
    (length,) = struct.unpack_from(">I", data, at - 4)
    crc_at = at + 4 + length
    data[crc_at + 3] ^= 0x01
    return bytes(data)


def png_idat_bomb() -> bytes:
    """6000x6000 8-bit grey (36 MP: within limits.max_pixels) in a 35 KB file: a zip bomb.

    The IDAT inflates to 36 MB, as the header says, so the header is the true size: at x3 the
    output would be 324 MP, refused by limits.max_output_pixels before anything is inflated.
    """
    width = height = 6000
    return png(width, height, zeros_deflated((width + 1) * height), colour=0)


def png_idat_overflow() -> bytes:
    """16x16 grey whose IDAT inflates to 32 MB, far more than its 272 bytes of rows.

    Decoders stop inflating when the image is complete: the excess is never expanded.
    """
    return png(16, 16, zeros_deflated(32 * 2**20), colour=0)


def png_ztxt_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MB (Pillow caps text at 1 MB)."""
    body = b"Comment\x00\x00" + zeros_deflated(64 * 2**20)
    data = save(rgb(), "PNG")
    return data[:33] + chunk(b"zTXt", body) + data[33:]


def png_iccp_bomb() -> bytes:
    """A small PNG whose iCCP profile inflates to 64 MB (Pillow caps it at 1 MB)."""
    body = b"bomb\x00\x00" + zeros_deflated(64 * 2**20)
    data = save(rgb(), "PNG")
    return data[:33] + chunk(b"iCCP", body) + data[33:]


def png_no_idat() -> bytes:
    """Signature, IHDR for 16x16, IEND: no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def png_wide(width: int = 65535) -> bytes:
    """width x 1 grey, a gradient row (1 px tall: as many pixels as a 256x256 image)."""
    row = (np.arange(width) % 251).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", row[None, :])
    assert ok
    return buffer.tobytes()


def png16(gray: bool) -> bytes:
    """16-bit RGB or grey PNG (OpenCV writes 16-bit RGB; Pillow cannot)."""
    deep = pixels(20, 16, 3).astype(np.uint16) * 257 + 3
    img = cv2.cvtColor(deep, cv2.COLOR_RGB2GRAY) if gray else deep[..., ::-1]
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(img))
    assert ok
    return buffer.tobytes()


def png16_gray_alpha() -> bytes:
    """16-bit grey + alpha PNG, built chunk by chunk (neither Pillow nor OpenCV writes one)."""
    width, height = 12, 10
    gray = (np.arange(width * height, dtype=np.uint16).reshape(height, width) * 500).astype(">u2")
    alpha = np.full((height, width), 40000, dtype=">u2")
    rows = np.ascontiguousarray(np.dstack([gray, alpha]))  # big-endian samples, G A G A ...
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))
    return png(width, height, zlib.compress(raw), depth=16, colour=4)


def palette_with_transparency() -> bytes:
    im = rgb().quantize(16)
    return save(im, "PNG", transparency=int(np.asarray(im)[0, 0]))


def gray_alpha() -> bytes:
    px = pixels(20, 16, 4)
    return save(Image.fromarray(np.dstack([px[..., 0], px[..., 3]]), "LA"), "PNG")


def one_bit() -> bytes:
    return save(rgb().convert("1"), "PNG")


def cmyk_jpeg() -> bytes:
    return save(rgb().convert("CMYK"), "JPEG", quality=90)


def exif_block(**tags: object) -> bytes:
    exif = Image.Exif()
    for key, value in tags.items():
        exif[int(key[1:])] = value
    return exif.tobytes()


def exif_rotated_jpeg() -> bytes:
    """20x16 stored, orientation 6 (rotate 90 clockwise to view): 16x20 as seen."""
    return save(rgb(), "JPEG", quality=90, exif=exif_block(t274=6, t271="srwatch-hostile"))


def jpeg_max_exif() -> bytes:
    """An EXIF block as large as one APP1 segment allows (65533 bytes; Pillow pads to 65532)."""
    overhead = len(exif_block(t274=8, t270="x" * 16)) - 16  # the block around the description
    block = exif_block(t274=8, t270="x" * (65533 - overhead))
    assert 65532 <= len(block) <= 65533
    return save(rgb(), "JPEG", quality=90, exif=block)


def png_huge_exif() -> bytes:
    """A PNG carrying a 200 KB EXIF block (eXIf chunk), more than any JPEG could hold."""
    return save(rgb(), "PNG", exif=exif_block(t274=1, t270="z" * 200_000))


def huge_icc() -> bytes:
    """An sRGB profile padded to 200 KB (size field fixed): JPEG splits it into 4 APP2 segments.

    LittleCMS stamps the creation time into the header: a fixed date (and no profile ID) keeps
    the bytes the same on every call.
    """
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    padded = profile + bytes(200_000 - len(profile))
    padded = patch(padded, 0, ">I", len(padded))
    padded = patch(padded, 24, ">6H", 2024, 1, 1, 0, 0, 0)  # dateTimeNumber
    return padded[:84] + bytes(16) + padded[100:]  # profile ID: zero means "not computed"


def jpeg_huge_icc() -> bytes:
    return save(rgb(), "JPEG", quality=90, icc_profile=huge_icc())


def jpeg_broken_exif() -> bytes:
    """A JPEG whose APP1 says Exif but holds a TIFF header pointing outside the block."""
    data = save(rgb(), "JPEG", quality=90)
    body = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\x00" * 16
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return data[:2] + app1 + data[2:]


def progressive_jpeg() -> bytes:
    return save(rgb(), "JPEG", quality=85, progressive=True)


def frames(count: int) -> list[Image.Image]:
    return [rgb(16, 12, seed) for seed in range(count)]


def animated(fmt: str) -> bytes:
    first, *rest = frames(3)
    options: dict[str, object] = {"save_all": True, "append_images": rest, "duration": 100}
    if fmt == "WEBP":
        options["lossless"] = True
    return save(first, fmt, **options)


def multipage_tiff() -> bytes:
    first, *rest = frames(2)
    return save(first, "TIFF", save_all=True, append_images=rest)


def float_tiff() -> bytes:
    return save(Image.fromarray(np.linspace(0, 1, 20 * 16, dtype=np.float32).reshape(16, 20), "F"), "TIFF")


def random_bytes(size: int = 4096, seed: int = 7) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert not data.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"II*", b"MM\x00", b"BM", b"RIFF"))
    return data


HTML = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n"
)


# --- the cases ----------------------------------------------------------------------------------


def _cases() -> list[Case]:
    """All cases, built fresh (each a few ms)."""
    good_png = save(rgb(), "PNG")
    good_jpeg = save(rgb(), "JPEG", quality=90)
    good_webp = save(rgb(), "WEBP", quality=90)
    good_tiff = save(rgb(), "TIFF")

    def ok(name: str, data: bytes, suffix: str, size: tuple[int, int], ext: str) -> Case:
        return Case(name, data, None, suffix, size, ext)

    builders: list[Callable[[], Case]] = [
        # Not images at all.
        lambda: Case("zero_bytes", b"", "empty", ".png"),
        lambda: Case("random_bytes", random_bytes(), "not_image", ".jpg"),
        lambda: Case("html_named_jpg", HTML, "not_image", ".jpg"),
        lambda: Case("text_named_png", b"just some notes, not a picture\n" * 40, "not_image", ".png"),
        lambda: Case("svg_named_png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', "not_image", ".png"),
        # Broken images.
        lambda: Case("truncated_png", truncated(good_png), "corrupt", ".png"),
        lambda: Case("truncated_jpeg", truncated(good_jpeg), "corrupt", ".jpg"),
        lambda: Case("truncated_webp", truncated(good_webp), "corrupt", ".webp"),
        lambda: Case("truncated_tiff", truncated(good_tiff), "corrupt", ".tiff"),
        lambda: Case("truncated_gif", truncated(save(rgb(), "GIF")), "corrupt", ".gif"),
        lambda: Case("png_half_header", good_png[:20], "corrupt", ".png"),
        lambda: Case("png_bad_crc", png_bad_crc(), "corrupt", ".png"),
        lambda: Case("png_no_idat", png_no_idat(), "corrupt", ".png"),
        lambda: Case("jpeg_soi_then_garbage", b"\xff\xd8\xff" + random_bytes(2000, 3), "corrupt", ".jpg"),
        lambda: Case("png_ztxt_bomb", png_ztxt_bomb(), "corrupt", ".png"),
        lambda: Case("png_iccp_bomb", png_iccp_bomb(), "corrupt", ".png"),
        lambda: Case("tiff_ifd_loop", tiff_ifd_loop(), "unsupported", ".tiff"),  # 2 pages, then the loop is cut
        # Headers that claim billions of pixels (refused before decoding).
        lambda: Case("png_header_bomb", png(200_000, 200_000, zlib.compress(bytes(64))), "too_large", ".png"),
        lambda: Case("jpeg_header_bomb", jpeg_with_size(65500, 65500), "too_large", ".jpg"),
        lambda: Case("tiff_header_bomb", tiff_with_size(100_000, 100_000), "too_large", ".tiff"),
        lambda: Case("webp_header_bomb", webp_lossless_header(16384, 16384), "too_large", ".webp"),
        lambda: Case("bmp_header_bomb", bmp_header(40_000, 40_000), "too_large", ".bmp"),
        lambda: Case("gif_header_bomb", gif_screen(65535, 65535), "too_large", ".gif"),
        lambda: Case("png_idat_bomb", png_idat_bomb(), "too_large", ".png"),
        # Odd but real images: processed.
        lambda: ok("png_idat_overflow", png_idat_overflow(), ".png", (16, 16), ".png"),
        lambda: ok("one_by_one", save(rgb(1, 1), "PNG"), ".png", (1, 1), ".png"),
        lambda: ok("wide_65535x1", png_wide(), ".png", (65535, 1), ".png"),
        lambda: ok("jpeg_too_wide_for_jpeg", save(rgb(22_000, 2), "JPEG", quality=80), ".jpg", (22_000, 2), ".png"),
        lambda: ok("webp_too_wide_for_webp", save(rgb(6_000, 2), "WEBP", lossless=True), ".webp", (6_000, 2), ".png"),
        lambda: ok("cmyk_jpeg", cmyk_jpeg(), ".jpg", (20, 16), ".jpg"),
        lambda: ok("png_16bit_rgb", png16(gray=False), ".png", (20, 16), ".png"),
        lambda: ok("png_16bit_gray", png16(gray=True), ".png", (20, 16), ".png"),
        lambda: ok("png_16bit_gray_alpha", png16_gray_alpha(), ".png", (12, 10), ".png"),
        lambda: ok("palette_transparency", palette_with_transparency(), ".png", (20, 16), ".png"),
        lambda: ok("gray_alpha", gray_alpha(), ".png", (20, 16), ".png"),
        lambda: ok("one_bit_png", one_bit(), ".png", (20, 16), ".png"),
        lambda: ok("exif_rotated_jpeg", exif_rotated_jpeg(), ".jpg", (16, 20), ".jpg"),
        lambda: ok("jpeg_max_exif", jpeg_max_exif(), ".jpg", (16, 20), ".jpg"),
        lambda: ok("png_huge_exif", png_huge_exif(), ".png", (20, 16), ".png"),
        lambda: ok("jpeg_huge_icc", jpeg_huge_icc(), ".jpg", (20, 16), ".jpg"),
        lambda: ok("jpeg_broken_exif", jpeg_broken_exif(), ".jpg", (20, 16), ".jpg"),
        lambda: ok("progressive_jpeg", progressive_jpeg(), ".jpg", (20, 16), ".jpg"),
        lambda: ok("jpeg_named_png", good_jpeg, ".png", (20, 16), ".jpg"),
        lambda: ok("gif_single_frame", save(rgb(), "GIF"), ".gif", (20, 16), ".png"),
        lambda: ok("bmp", save(rgb(), "BMP"), ".bmp", (20, 16), ".png"),
        lambda: ok("webp_lossless_alpha", save(Image.fromarray(pixels(20, 16, 4), "RGBA"), "WEBP", lossless=True), ".webp", (20, 16), ".webp"),
        lambda: ok("tiff_lzw", save(rgb(), "TIFF", compression="tiff_lzw"), ".tif", (20, 16), ".tiff"),
        # Real images of kinds srwatch does not handle.
        lambda: Case("animated_gif", animated("GIF"), "unsupported", ".gif"),
        lambda: Case("animated_png", animated("PNG"), "unsupported", ".png"),
        lambda: Case("animated_webp", animated("WEBP"), "unsupported", ".webp"),
        lambda: Case("multipage_tiff", multipage_tiff(), "unsupported", ".tiff"),
        lambda: Case("float_tiff", float_tiff(), "unsupported", ".tiff"),
        lambda: Case("ico", save(rgb(16, 16), "ICO"), "unsupported", ".ico"),
        lambda: Case("pcx_named_png", save(rgb(), "PCX"), "unsupported", ".png"),
    ]
    return [build() for build in builders]


HOSTILE: list[Case] = _cases()
