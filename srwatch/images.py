"""Reading and writing image files: sniffed content, guarded size, metadata carried through.

Reading:

* the claimed file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked on the open descriptor:
  a symbolic link is refused unread (LinkRefused), anything but a regular file (FIFO, socket,
  device, folder) too (NotAFile), and a FIFO never blocks the worker;
* the size is checked before reading (``limits.max_file_mb``), at most the size seen at claim
  time is read, and the pixel count from the header before decoding (``limits.max_pixels``;
  a WebP's before Pillow's decoder allocates its canvas), so a decompression bomb is refused
  unread;
* the format is sniffed from the content with Pillow's header parser; the extension is ignored;
* Pillow decodes 8-bit images with ``LOAD_TRUNCATED_IMAGES`` left False (a truncated file is an
  error, never grey pixels); PNGs are first ``verify()``-ed, which checks every chunk's CRC;
* 16-bit images (which Pillow reads only as grayscale) are decoded with
  ``cv2.imdecode(IMREAD_UNCHANGED)``; ``None`` from it means corrupt;
* EXIF orientation is applied to the pixels, and the carried EXIF says orientation 1.

Pixels are numpy arrays in OpenCV order: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) BGR,
(H, W, 4) BGRA; uint8 or uint16.

Writing: the output is planned before inference (``plan_output``): a size WebP (16383 px per
side) or JPEG (65500) cannot hold, or alpha for JPEG, gives PNG instead, and EXIF larger than
one JPEG APP1 segment is dropped, each with a note. 8-bit through Pillow (ICC profile and EXIF
into PNG, JPEG, WebP and TIFF), straight from the BGR pixels with no RGB copy; 16-bit through
``cv2.imencode``; a 16-bit PNG gets its iCCP and eXIf chunks inserted by us (OpenCV before 5.0
cannot write an ICC profile into PNG), a 16-bit TIFF goes without, with a note.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional, TypeVar

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .config import LimitsConfig, OutputConfig
from .errors import (
    CorruptImage, EmptyFile, JobError, LinkRefused, NotAFile, NotAnImage, OutputError, TooManyPixels, UnsupportedImage,
)
from .png import EXIF_PREFIX as _EXIF_PREFIX, SIGNATURE as PNG_SIGNATURE, encode_png

T = TypeVar("T")

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
    PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM",
)

#: Bytes read to sniff a file's format (signatures and the PNG IHDR are in the first 32).
HEADER_BYTES = 64

#: EXIF tag numbers.
ORIENTATION = 0x0112
#: IFD0 tags of a TIFF input that describe the picture (the rest describe the file's layout).
_TIFF_DESCRIPTIVE_TAGS = (270, 271, 272, 305, 306, 315, 33432)



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

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) as seen, EXIF orientation applied (5 to 8 swap the sides)."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


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


def _file_kind(mode: int) -> str:
    """A file type in words, for messages."""
    for test, word in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return word
    return "special file"


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its fstat; the caller closes it.

    Opened with O_NOFOLLOW (a symbolic link raises LinkRefused: its target is never read) and
    O_NONBLOCK (a FIFO with no writer does not block the open); anything but a regular file
    raises NotAFile, then O_NONBLOCK is cleared. Other OSErrors (ENOENT, EACCES, EIO, ...) pass.
    """
    name = Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # Linux / BSD for O_NOFOLLOW on a link
            raise LinkRefused(f"{name} is a symbolic link: srwatch never follows links") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise NotAFile(f"{name} is a socket, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(f"{name} is a {_file_kind(st.st_mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_size(size: int, limits: LimitsConfig) -> int:
    """``size`` (bytes); EmptyFile for 0, TooManyPixels above limits.max_file_mb."""
    if size == 0:
        raise EmptyFile("the file is empty (0 bytes)")
    if size > limits.max_file_mb * 2**20:
        raise TooManyPixels(f"the file is {size / 2**20:.1f} MB, more than limits.max_file_mb ({limits.max_file_mb:g})")
    return size


def check_file_size(path: Path, limits: LimitsConfig) -> int:
    """The file's size in bytes, after check_size (links and non-regular files refused)."""
    fd, st = open_regular(path)
    os.close(fd)
    return check_size(st.st_size, limits)


def read_input(path: Path, limits: LimitsConfig, max_bytes: Optional[int] = None) -> bytes:
    """The file's bytes: at most ``max_bytes`` (the size seen at claim time), after the size checks.

    Nothing is read from a file that is too big, a link or not a regular file (open_regular).
    A file that grew since it was claimed is read only up to ``max_bytes``; one that shrank
    gives what is there (the decoder then finds it truncated). Environmental OSErrors pass.
    """
    fd, st = open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = st.st_size if max_bytes is None else min(st.st_size, max(0, max_bytes))
        check_size(size, limits)
        data = _read_exactly(f, size)
    if not data:  # truncated to nothing between fstat and read
        raise EmptyFile("the file is empty (0 bytes)")
    return data


def _read_exactly(f: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at end of file; one allocation in the usual case."""
    data = f.read(size) or b""
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = f.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def check_pixels(width: int, height: int, limits: LimitsConfig) -> None:
    """TooManyPixels when width x height is more than limits.max_pixels."""
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"{width}x{height} = {width * height} pixels is more than limits.max_pixels ({limits.max_pixels})"
        )


def webp_canvas(head: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a WebP's first chunk (VP8, VP8L or VP8X), or None if not readable.

    Read by us because Pillow's WebP decoder allocates the whole canvas when it opens a file.
    """
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and head[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", head, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


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
    """EXIF orientation from the header, 1 if none (or broken).

    A PNG's eXIf after IDAT is not looked for here: Pillow's getexif() would decode the whole
    image to reach it, before the output limits are checked. _decode finds it (_png_exif).
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not fail the image; it is only metadata
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_orientation(block: bytes) -> int:
    """Orientation (1..8) in an EXIF block (with or without the "Exif\\0\\0" prefix), 1 if none."""
    try:
        exif = Image.Exif()
        exif.load(block)
        value = exif.get(ORIENTATION, 1)
    except Exception:  # broken metadata is ignored, as in _orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_exif(data: bytes) -> Optional[bytes]:
    """The body of a PNG's eXIf chunk wherever it is (after IDAT too), by walking chunk headers."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


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
    check_pixels(width, height, limits)
    if width == 0 or height == 0:
        raise CorruptImage(f"the header says {width}x{height}")
    return ImageInfo(
        format=fmt, width=width, height=height, mode=im.mode, bit_depth=_bit_depth(im, head),
        orientation=_orientation(im), file_size=file_size,
    )


def _open_checked(stream: BinaryIO, head: bytes, limits: LimitsConfig) -> Image.Image:
    """_open, after the checks that must come before Pillow allocates anything (WebP canvas)."""
    canvas = webp_canvas(head)
    if canvas is not None:
        check_pixels(*canvas, limits)
    return _open(stream, head)


def probe(path: Path, limits: LimitsConfig) -> ImageInfo:
    """Header facts of an image file (no pixel decoding); raises the JobError that fits."""
    fd, st = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = check_size(st.st_size, limits)
        head = f.read(HEADER_BYTES)
        f.seek(0)
        return _guarded(lambda: _header(f, head, size, limits))


def read_header(data: bytes, limits: LimitsConfig) -> ImageInfo:
    """Header facts of an image held in memory (nothing decoded); raises the JobError that fits."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    return _guarded(lambda: _header(io.BytesIO(data), data[:HEADER_BYTES], len(data), limits))


def _header(stream: BinaryIO, head: bytes, size: int, limits: LimitsConfig) -> ImageInfo:
    with _open_checked(stream, head, limits) as im:
        return _info_from(im, head, size, limits)


def read_image(path: Path, limits: LimitsConfig) -> Decoded:
    """Read, check and decode an image file."""
    return decode_image(read_input(path, limits), limits)


def decode_image(data: bytes, limits: LimitsConfig) -> Decoded:
    """Decode an image held in memory; raises NotAnImage, CorruptImage, TooManyPixels, ...."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)")
    return _guarded(lambda: _decode(data, limits))


def _guarded(step: Callable[[], T]) -> T:
    """``step()``, with a decoder failing in a way nobody foresaw (IndexError, ...) as CorruptImage.

    JobErrors and MemoryError pass unchanged; anything else raised while parsing is the data's fault.
    """
    try:
        return step()
    except (JobError, MemoryError):
        raise
    except Exception as exc:
        raise CorruptImage(f"cannot decode: {type(exc).__name__}: {exc}") from exc


def _decode(data: bytes, limits: LimitsConfig) -> Decoded:
    im = _open_checked(io.BytesIO(data), data[:HEADER_BYTES], limits)
    info = _info_from(im, data, len(data), limits)
    if info.format == "TIFF" and info.orientation != 1:
        # Some decoder versions orient TIFFs themselves (Pillow 13 and OpenCV 5 do, older Pillow
        # does not): decode a copy tagged orientation 1 so only apply_orientation turns pixels.
        data = _tiff_orientation_to_1(data)
        im = _open(io.BytesIO(data), data[:HEADER_BYTES])
    if info.format == "PNG":
        _verify_png(data)
        late = _png_exif(data) if "exif" not in im.info else None
        if late:  # an eXIf chunk after IDAT: its orientation counts too
            im.info["exif"] = _EXIF_PREFIX + late
            info = dataclasses.replace(info, orientation=_exif_orientation(late))
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
    except Exception as exc:  # OSError, SyntaxError, ... and IndexError for a PNG without IDAT
        raise CorruptImage(f"damaged PNG: {exc or type(exc).__name__}") from None


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

#: Largest side, in pixels, that each output format can hold (libwebp 16383, libjpeg 65500).
MAX_SIDE: dict[str, int] = {"webp": 16383, "jpg": 65500}

#: Largest EXIF block a JPEG can hold: one APP1 segment, 65535 bytes less its length field.
MAX_JPEG_EXIF = 65533

_FORMAT_NAMES = {"png": "PNG", "jpg": "JPEG", "webp": "WebP", "tiff": "TIFF"}


@dataclass(frozen=True)
class OutputPlan:
    """What the output file will be, decided before inference so no format limit fails after it."""

    format: str  # png | jpg | webp | tiff
    size: tuple[int, int]  # (width, height) of the result
    icc: Optional[bytes]  # ICC profile to write, or None
    exif: Optional[bytes]  # EXIF block to write ("Exif\0\0" + TIFF, orientation 1), or None
    notes: tuple[str, ...] = ()  # each change from what the config asked for

    @property
    def ext(self) -> str:
        """File extension, with the dot."""
        return EXTENSIONS[self.format]


def output_format(decoded: Decoded, output_cfg: OutputConfig) -> str:
    """The configured format, with 'same' resolved from the input (GIF and BMP give PNG)."""
    if output_cfg.format == "same":
        return INPUT_FORMATS[decoded.info.format]
    return output_cfg.format


def has_alpha(pixels: np.ndarray) -> bool:
    """True for gray+alpha and BGRA pixels."""
    return pixels.ndim == 3 and pixels.shape[2] in (2, 4)


def plan_output(
    decoded: Decoded, size: tuple[int, int], output_cfg: OutputConfig, alpha: Optional[bool] = None
) -> OutputPlan:
    """The output's format and metadata for a result of ``size`` (width, height).

    PNG replaces JPEG for alpha (``alpha``: the result has it; default: the input has it), and
    replaces JPEG or WebP for a side longer than the format holds (MAX_SIDE). EXIF larger than
    one JPEG APP1 segment is replaced, for JPEG, by a minimal block saying orientation 1 (the
    pixels are already turned). Each change is a note.
    """
    fmt = output_format(decoded, output_cfg)
    notes: list[str] = []
    if fmt == "jpg" and (has_alpha(decoded.pixels) if alpha is None else alpha):
        fmt = "png"
        notes.append("RGBA output written as PNG instead of JPEG (JPEG has no alpha)")
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(size) > limit:
        name = _FORMAT_NAMES[fmt]
        notes.append(f"{size[0]}x{size[1]} output written as PNG instead of {name} ({name} holds at most {limit} px per side)")
        fmt = "png"
    icc = decoded.icc if output_cfg.keep_metadata else None
    exif = decoded.exif if output_cfg.keep_metadata else None
    if fmt == "jpg" and exif is not None and len(exif) > MAX_JPEG_EXIF:
        notes.append(
            f"EXIF of {len(exif)} bytes dropped (a JPEG holds at most {MAX_JPEG_EXIF}, one APP1 segment); "
            "orientation 1 written"
        )
        exif = minimal_exif()
    return OutputPlan(format=fmt, size=size, icc=icc, exif=exif, notes=tuple(notes))


def minimal_exif() -> bytes:
    """An EXIF block holding only orientation 1."""
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    data = exif.tobytes()
    return data if data.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + data


def encode_image(
    pixels: np.ndarray, decoded: Decoded, output_cfg: OutputConfig, plan: Optional[OutputPlan] = None
) -> Encoded:
    """Encode result pixels per ``plan`` (made by plan_output for their size if not given).

    16-bit becomes 8-bit for JPEG and WebP, which have no 16-bit form. Every change from the
    configuration (the plan's and these) is reported in ``notes``.
    """
    size = (pixels.shape[1], pixels.shape[0])
    alpha = has_alpha(pixels)
    if plan is None or plan.size != size or (plan.format == "jpg" and alpha):
        plan = plan_output(decoded, size, output_cfg, alpha=alpha)
    fmt = plan.format
    notes = list(plan.notes)
    if pixels.dtype == np.uint16 and fmt in ("jpg", "webp"):
        pixels = to_8bit(pixels)
        notes.append(f"16-bit output reduced to 8-bit for {fmt.upper()}")
    try:
        if pixels.dtype == np.uint16:
            data, more = _encode_16bit(pixels, fmt, plan.icc, plan.exif, output_cfg)
            notes.extend(more)
        else:
            data = _encode_8bit(pixels, fmt, plan.icc, plan.exif, output_cfg)
    except (OSError, ValueError, cv2.error, struct.error) as exc:
        raise OutputError(f"cannot encode the result as {fmt}: {exc}") from exc
    return Encoded(data=data, ext=plan.ext, notes=tuple(notes))


#: uint16 -> uint8 by rounding x / 257 (the same as rint(float32(x) / 257) for every value).
_TO_8BIT = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (x / 257), by table: no float copy of the image."""
    return _TO_8BIT[pixels]


def _to_pillow(pixels: np.ndarray) -> Image.Image:
    """8-bit OpenCV-order pixels as a Pillow image (L, LA, RGB, RGBA).

    BGR(A) is unpacked by Pillow itself (raw mode BGR / BGRA): no RGB copy of the image.
    """
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    if pixels.ndim == 2:
        mode, rawmode = "L", "L"
    else:
        mode, rawmode = {2: ("LA", "LA"), 3: ("RGB", "BGR"), 4: ("RGBA", "BGRA")}[pixels.shape[2]]
    return Image.frombuffer(mode, (width, height), pixels, "raw", rawmode, 0, 1)


def _encode_8bit(
    pixels: np.ndarray, fmt: str, icc: Optional[bytes], exif: Optional[bytes], cfg: OutputConfig
) -> bytes:
    """Encode PNG with srwatch's own writer (png.encode_png), the other formats with Pillow.

    Pillow writes ICC and EXIF into JPEG, WebP and TIFF; the PNG writer adds them as chunks.
    """
    if fmt == "png":
        return encode_png(pixels, cfg.png_compression, icc, exif)
    im = _to_pillow(pixels)
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if fmt == "jpg":
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
    """Encode 16-bit PNG (with ICC/EXIF, png.encode_png) or TIFF (without, OpenCV); returns (data, notes)."""
    if fmt == "png":
        return encode_png(pixels, cfg.png_compression, icc, exif), []
    notes: list[str] = []
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # OpenCV writes no gray+alpha
        gray, alpha = split_alpha(pixels)
        pixels = join_alpha(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), alpha)
        notes.append("16-bit gray+alpha written as RGBA")
    if icc or exif:
        notes.append("ICC profile / EXIF not carried into a 16-bit TIFF")
    ok, buffer = cv2.imencode(".tiff", pixels)
    if not ok:
        raise OutputError("OpenCV could not encode a 16-bit TIFF")
    return buffer.tobytes(), notes
