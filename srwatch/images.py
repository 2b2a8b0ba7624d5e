"""Reading and writing image files: sniffed content, guarded size, metadata carried through.

Reading:

* the file size is checked before reading (``limits.max_file_mb``) and the pixel count from the
  header before decoding (``limits.max_pixels``), so a decompression bomb is refused unread;
* the format is sniffed from the content with Pillow's header parser; the extension is ignored;
* Pillow decodes 8-bit images with ``LOAD_TRUNCATED_IMAGES`` left False (a truncated file is an
  error, never grey pixels); PNGs are first ``verify()``-ed, which checks every chunk's CRC;
* 16-bit images (which Pillow reads only as grayscale) are decoded with
  ``cv2.imdecode(IMREAD_UNCHANGED)``; ``None`` from it means corrupt;
* EXIF orientation is applied to the pixels, and the carried EXIF says orientation 1.

Pixels are numpy arrays in OpenCV order: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) BGR,
(H, W, 4) BGRA; uint8 or uint16.

Writing: 8-bit through Pillow (ICC profile and EXIF into PNG, JPEG, WebP and TIFF), 16-bit
through ``cv2.imencode``; a 16-bit PNG gets its iCCP and eXIf chunks inserted by us (OpenCV
before 5.0 cannot write an ICC profile into PNG), a 16-bit TIFF goes without, with a note.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .config import LimitsConfig, OutputConfig
from .errors import CorruptImage, EmptyFile, NotAnImage, OutputError, TooManyPixels, UnsupportedImage

# Our limits.max_pixels check reads the same header and names our own limit; Pillow's guard
# would raise first (from Image.open, above 2 x MAX_IMAGE_PIXELS) with a message about Pillow.
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail, not decode with grey where the data ends.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Pillow format names we read, and the output format 'same' means for each.
INPUT_FORMATS: dict[str, str] = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",  # JPEG with extra images appended (some cameras); we read the first
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "png",
    "GIF": "png",
}

#: Output format -> file extension.
EXTENSIONS: dict[str, str] = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}

#: Leading bytes of the formats we read: a file that starts like one but does not parse is corrupt.
_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM",
)

#: Bytes read to sniff a file's format (signatures and the PNG IHDR are in the first 32).
HEADER_BYTES = 64

#: EXIF tag numbers.
ORIENTATION = 0x0112
#: IFD0 tags of a TIFF input that describe the picture (the rest describe the file's layout).
_TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, 305, 306, 315, 33432)

_EXIF_PREFIX = b"Exif\x00\x00"


@dataclass(frozen=True)
class ImageInfo:
    """What the header says (before decoding)."""

    format: str  # Pillow's name: PNG, JPEG, WEBP, TIFF, BMP, GIF, MPO
    width: int  # as stored, before EXIF orientation
    height: int
    mode: str  # Pillow's mode
    bit_depth: int  # 8 or 16 per sample
    orientation: int  # EXIF orientation, 1 = as stored
    file_size: int  # in bytes

    @property
    def pixels(self) -> int:
        """width x height."""
        return self.width * self.height


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels (orientation applied) and the metadata to carry to the output."""

    pixels: np.ndarray
    info: ImageInfo
    icc: Optional[bytes] = None  # ICC profile
    exif: Optional[bytes] = None  # "Exif\0\0" + TIFF structure, orientation reset to 1
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the pixels, after orientation."""
        return self.pixels.shape[1], self.pixels.shape[0]


@dataclass(frozen=True)
class Encoded:
    """An encoded output file."""

    data: bytes
    ext: str  # with the dot, e.g. '.png'
    notes: tuple[str, ...] = ()


# --- reading ----------------------------------------------------------------------------------


def check_file_size(path: Path, limits: LimitsConfig) -> int:
    """The file's size in bytes; EmptyFile for 0, TooManyPixels above limits.max_file_mb."""
    size = os.stat(path).st_size
    if size == 0:
        raise EmptyFile("the file is empty (0 bytes)")
    if size > limits.max_file_mb * 2**20:
        raise TooManyPixels(f"the file is {size / 2**20:.1f} MB, more than limits.max_file_mb ({limits.max_file_mb:g})")
    return size


def read_input(path: Path, limits: LimitsConfig) -> bytes:
    """The file's bytes, after the size checks (nothing is read from a file that is too big)."""
    check_file_size(path, limits)
    data = Path(path).read_bytes()
    if not data:  # truncated to nothing between stat and read
        raise EmptyFile("the file is empty (0 bytes)")
    return data


def _open(stream: BinaryIO, head: bytes) -> Image.Image:
    """Pillow's lazy open (header only); NotAnImage / CorruptImage when it cannot parse.

    ``head`` is the file's first bytes: one that starts like an image format is called corrupt.
    """
    try:
        return Image.open(stream)
    except UnidentifiedImageError:
        if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            raise CorruptImage("the header of this image is damaged") from None
        raise NotAnImage("the content is not an image format srwatch reads (PNG, JPEG, WebP, TIFF, BMP, GIF)") from None
    except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's guard
        raise TooManyPixels(str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImage(f"cannot parse the image header: {exc}") from None


def _bit_depth(im: Image.Image, data: bytes) -> int:
    """Bits per sample from the header: 16 for 16-bit PNG/TIFF, 8 otherwise."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return 16 if data[24] == 16 else 8
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, 8)  # BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        return 16 if bits == 16 else 8
    return 16 if im.mode.startswith("I;16") else 8


def _frame_count(im: Image.Image) -> int:
    try:
        return int(getattr(im, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImage(f"cannot count the frames: {exc}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not fail the image; it is only metadata
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _info_from(im: Image.Image, head: bytes, file_size: int, limits: LimitsConfig) -> ImageInfo:
    """ImageInfo from an opened header; raises for formats, animations and sizes we refuse."""
    fmt = im.format or "?"
    if fmt not in INPUT_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not supported (PNG, JPEG, WebP, TIFF, BMP, GIF are)")
    frames = _frame_count(im)
    if frames > 1 and fmt != "MPO":
        kind = "multi-page TIFF" if fmt == "TIFF" else f"animated {'APNG' if fmt == 'PNG' else fmt}"
        raise UnsupportedImage(f"{kind} ({frames} frames) is not supported")
    width, height = im.size
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"{width}x{height} = {width * height} pixels is more than limits.max_pixels ({limits.max_pixels})"
        )
    if width == 0 or height == 0:
        raise CorruptImage(f"the header says {width}x{height}")
    return ImageInfo(
        format=fmt, width=width, height=height, mode=im.mode, bit_depth=_bit_depth(im, head),
        orientation=_orientation(im), file_size=file_size,
    )


def probe(path: Path, limits: LimitsConfig) -> ImageInfo:
    """Header facts of an image file (no pixel decoding); raises the JobError that fits."""
    size = check_file_size(path, limits)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        f.seek(0)
        with _open(f, head) as im:
            return _info_from(im, head, size, limits)


def read_image(path: Path, limits: LimitsConfig) -> Decoded:
    """Read, check and decode an image file."""
    return decode_image(read_input(path, limits), limits)


def decode_image(data: bytes, limits: LimitsConfig) -> Decoded:
    """Decode an image held in memory; raises NotAnImage, CorruptImage, TooManyPixels, ...."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    im = _open(io.BytesIO(data), data[:HEADER_BYTES])
    info = _info_from(im, data, len(data), limits)
    if info.format == "TIFF" and info.orientation != 1:
        # Some decoder versions orient TIFFs themselves (Pillow 13 and OpenCV 5 do, older Pillow
        # does not): decode a copy tagged orientation 1 so only apply_orientation turns pixels.
        data = _tiff_orientation_to_1(data)
        im = _open(io.BytesIO(data), data[:HEADER_BYTES])
    if info.format == "PNG":
        _verify_png(data)
    if info.bit_depth == 16:
        pixels = _decode_16bit(data)
        notes: tuple[str, ...] = ()
        icc = im.info.get("icc_profile")
    else:
        pixels, icc, notes = _decode_8bit(im)
    exif = _carried_exif(im)
    pixels = apply_orientation(pixels, info.orientation)
    return Decoded(pixels=pixels, info=info, icc=icc or None, exif=exif, notes=notes)


def _verify_png(data: bytes) -> None:
    """Every chunk's CRC (IDAT included) must match; Pillow's load() does not check IDAT CRCs."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImage(f"damaged PNG: {exc}") from None


def _decode_16bit(data: bytes) -> np.ndarray:
    """16-bit pixels with OpenCV (Pillow has no 16-bit RGB); None from imdecode means corrupt."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise CorruptImage("the image data cannot be decoded (corrupt or truncated)")
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise UnsupportedImage(f"{pixels.dtype} images with shape {pixels.shape} are not supported")
    return pixels


def _decode_8bit(im: Image.Image) -> tuple[np.ndarray, Optional[bytes], tuple[str, ...]]:
    """(pixels in OpenCV order, ICC profile, notes) with Pillow; CorruptImage if data is bad."""
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImage(f"the image data cannot be decoded: {exc}") from None
    icc = im.info.get("icc_profile")
    notes: tuple[str, ...] = ()
    mode = im.mode
    has_transparency = "transparency" in im.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.uint16).copy(), icc, notes
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "L" and has_transparency:
        im, mode = im.convert("LA"), "LA"
    elif mode in ("P", "PA"):
        target = "RGBA" if has_transparency or mode == "PA" else "RGB"
        im, mode = im.convert(target), target
    elif mode == "RGB" and has_transparency:
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in ("CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        if mode == "CMYK" and icc:
            icc, notes = None, ("CMYK converted to RGB; its CMYK ICC profile is not carried",)
        im, mode = im.convert("RGB"), "RGB"
    elif mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise UnsupportedImage(f"Pillow mode {im.mode} is not supported")
    array = np.asarray(im)
    if mode == "RGB":
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif mode == "RGBA":
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    return np.ascontiguousarray(array), icc, notes


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as they should be seen, per EXIF orientation (1..8)."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return _transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(_transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _transpose(pixels: np.ndarray) -> np.ndarray:
    """Swap rows and columns (any channel count, unlike cv2.transpose)."""
    axes = (1, 0) + tuple(range(2, pixels.ndim))
    return np.ascontiguousarray(pixels.transpose(axes))


def _carried_exif(im: Image.Image) -> Optional[bytes]:
    """The EXIF block to write to the output ("Exif\\0\\0" + TIFF), orientation set to 1."""
    try:
        raw = im.info.get("exif")
        if raw:
            raw = raw if raw.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + raw
            return reset_orientation(raw)
        if im.format == "TIFF":
            return _tiff_descriptive_exif(im)
    except Exception:  # metadata is best effort: a broken EXIF block is dropped, not fatal
        return None
    return None


def _tiff_descriptive_exif(im: Image.Image) -> Optional[bytes]:
    """A TIFF input's descriptive IFD0 tags (make, model, date, ...) as an EXIF block."""
    source = im.getexif()
    exif = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE_TAGS:
        if tag in source:
            exif[tag] = source[tag]
    return exif.tobytes() if len(exif) else None


def reset_orientation(exif: bytes) -> bytes:
    """The EXIF block ("Exif\\0\\0" + TIFF structure) with its orientation entry set to 1.

    Patching the value (rather than re-serialising with Pillow) keeps every other byte, maker
    notes included, whose internal offsets a re-serialisation could break.
    """
    return _EXIF_PREFIX + _tiff_orientation_to_1(exif[len(_EXIF_PREFIX):])


def _tiff_orientation_to_1(tiff: bytes) -> bytes:
    """A TIFF structure (a TIFF file, or an EXIF block's body) with IFD0's orientation set to 1."""
    out = bytearray(tiff)
    order = {b"II": "<", b"MM": ">"}.get(bytes(out[:2]))
    if order is None or len(out) < 8:
        return tiff
    (ifd,) = struct.unpack_from(order + "I", out, 4)
    if ifd + 2 > len(out):
        return tiff
    (count,) = struct.unpack_from(order + "H", out, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(out):
            break
        tag, kind = struct.unpack_from(order + "HH", out, entry)
        if tag == ORIENTATION and kind == 3:  # SHORT, value inline
            struct.pack_into(order + "H", out, entry + 8, 1)
    return bytes(out)


# --- alpha ------------------------------------------------------------------------------------


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(colour, alpha or None): (H, W, 2) -> gray + alpha, (H, W, 4) -> BGR + alpha."""
    if not has_alpha(pixels):
        return pixels, None
    colour = pixels[..., 0] if pixels.shape[2] == 2 else pixels[..., :3]
    return np.ascontiguousarray(colour), np.ascontiguousarray(pixels[..., -1])


def join_alpha(colour: np.ndarray, alpha: Optional[np.ndarray]) -> np.ndarray:
    """Inverse of split_alpha."""
    return colour if alpha is None else np.dstack([colour, alpha])


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Alpha resized by ``scale`` with bicubic, clipped to the dtype's range (cv2 saturates)."""
    height, width = alpha.shape[:2]
    return cv2.resize(alpha, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)


# --- writing ----------------------------------------------------------------------------------


def output_format(decoded: Decoded, output_cfg: OutputConfig) -> str:
    """The configured format, with 'same' resolved from the input (GIF and BMP give PNG)."""
    if output_cfg.format == "same":
        return INPUT_FORMATS[decoded.info.format]
    return output_cfg.format


def has_alpha(pixels: np.ndarray) -> bool:
    """True for gray+alpha and BGRA pixels."""
    return pixels.ndim == 3 and pixels.shape[2] in (2, 4)


def encode_image(pixels: np.ndarray, decoded: Decoded, output_cfg: OutputConfig) -> Encoded:
    """Encode result pixels as the configured format, carrying ICC/EXIF where the format allows.

    An image with alpha is never written as JPEG (PNG instead); 16-bit becomes 8-bit for JPEG
    and WebP, which have no 16-bit form. Each such change is reported in ``notes``.
    """
    fmt = output_format(decoded, output_cfg)
    notes: list[str] = []
    if fmt == "jpg" and has_alpha(pixels):
        fmt = "png"
        notes.append("RGBA output written as PNG instead of JPEG (JPEG has no alpha)")
    if pixels.dtype == np.uint16 and fmt in ("jpg", "webp"):
        pixels = to_8bit(pixels)
        notes.append(f"16-bit output reduced to 8-bit for {fmt.upper()}")
    icc = decoded.icc if output_cfg.keep_metadata else None
    exif = decoded.exif if output_cfg.keep_metadata else None
    try:
        if pixels.dtype == np.uint16:
            data, more = _encode_16bit(pixels, fmt, icc, exif, output_cfg)
            notes.extend(more)
        else:
            data = _encode_8bit(pixels, fmt, icc, exif, output_cfg)
    except (OSError, ValueError, cv2.error, struct.error) as exc:
        raise OutputError(f"cannot encode the result as {fmt}: {exc}") from exc
    return Encoded(data=data, ext=EXTENSIONS[fmt], notes=tuple(notes))


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (x / 257)."""
    return np.clip(np.rint(pixels.astype(np.float32) * np.float32(1.0 / 257.0)), 0, 255).astype(np.uint8)


def _to_pillow(pixels: np.ndarray) -> Image.Image:
    """8-bit OpenCV-order pixels as a Pillow image (L, LA, RGB, RGBA)."""
    if pixels.ndim == 2:
        return Image.fromarray(pixels, "L")
    channels = pixels.shape[2]
    if channels == 2:
        return Image.fromarray(pixels, "LA")
    if channels == 3:
        return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), "RGB")
    return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA), "RGBA")


def _encode_8bit(
    pixels: np.ndarray, fmt: str, icc: Optional[bytes], exif: Optional[bytes], cfg: OutputConfig
) -> bytes:
    """Encode with Pillow, which writes ICC and EXIF into all four formats."""
    im = _to_pillow(pixels)
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if fmt == "png":
        options["compress_level"] = cfg.png_compression
        pillow_format = "PNG"
    elif fmt == "jpg":
        options["quality"] = cfg.jpeg_quality
        pillow_format = "JPEG"
    elif fmt == "webp":
        if im.mode == "LA":  # WebP has no gray+alpha
            im = im.convert("RGBA")
        if cfg.webp_quality > 100:  # 101 means lossless
            options["lossless"] = True
        else:
            options["quality"] = cfg.webp_quality
        pillow_format = "WEBP"
    else:
        options["compression"] = "tiff_adobe_deflate"
        pillow_format = "TIFF"
    buffer = io.BytesIO()
    im.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _encode_16bit(
    pixels: np.ndarray, fmt: str, icc: Optional[bytes], exif: Optional[bytes], cfg: OutputConfig
) -> tuple[bytes, list[str]]:
    """Encode 16-bit PNG (with ICC/EXIF) or TIFF (without) with OpenCV; returns (data, notes)."""
    notes: list[str] = []
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # OpenCV writes no gray+alpha
        gray, alpha = split_alpha(pixels)
        pixels = join_alpha(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), alpha)
        notes.append("16-bit gray+alpha written as RGBA")
    if fmt == "png":
        ok, buffer = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression])
    else:
        if icc or exif:
            notes.append("ICC profile / EXIF not carried into a 16-bit TIFF")
        ok, buffer = cv2.imencode(".tiff", pixels)
    if not ok:
        raise OutputError(f"OpenCV could not encode a 16-bit {fmt.upper()}")
    data = buffer.tobytes()
    if fmt == "png":
        data = add_png_metadata(data, icc, exif)
    return data, notes


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """length, type, body, CRC32 of type + body."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def add_png_metadata(png: bytes, icc: Optional[bytes], exif: Optional[bytes]) -> bytes:
    """The PNG with iCCP and eXIf chunks inserted right after IHDR (before any PLTE/IDAT).

    eXIf holds the bare TIFF structure (no "Exif\\0\\0" prefix), as the PNG spec says.
    """
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, IHDR length, type, 13-byte body, CRC
    if png[12:16] != b"IHDR":
        raise OutputError("OpenCV wrote an unexpected PNG layout")
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif)
    return png[:ihdr_end] + extra + png[ihdr_end:]
