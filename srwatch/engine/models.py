"""Which model a file holds: algorithm, scale and format, from config, metadata or file name.

Upstream OpenCV dnn_superres files are named ``<ALGO>[-variant]_x<scale>.pb`` (``EDSR_x3.pb``,
``FSRCNN-small_x4.pb``, ``LapSRN_x8.pb``); our own exports follow the same pattern
(``EDSR-srwatch_x3.onnx``). ONNX files may also carry ``srwatch.algorithm`` / ``srwatch.scale``
in their metadata_props. Explicit ``model.algorithm`` / ``model.scale`` always win.
"""
from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

from ..config import ModelConfig
from ..errors import ModelLoadError

#: The algorithms whose pre- and post-processing we know (the dnn_superres set).
ALGORITHMS: tuple[str, ...] = ("edsr", "espcn", "fsrcnn", "lapsrn")

#: These run on the Y channel of YCrCb in 0..1; the chroma is resized classically.
LUMA_ALGORITHMS: frozenset[str] = frozenset({"espcn", "fsrcnn", "lapsrn"})

#: BGR mean of DIV2K, digit for digit as dnn_superres.cpp subtracts it for "edsr" (0..255).
DIV2K_MEAN_BGR: tuple[float, float, float] = (103.1545782, 111.561547, 114.35629928)

#: File suffix -> format name.
FORMATS: dict[str, str] = {".pb": "pb", ".onnx": "onnx"}

#: ``EDSR_x3``, ``FSRCNN-small_x4``, ``EDSR-srwatch_x3``: algorithm, optional variants, scale.
_NAME = re.compile(r"^(?P<algo>[A-Za-z]+)(?:-[A-Za-z0-9]+)*_x(?P<scale>\d+)$")

Format = Literal["pb", "onnx"]


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model file: what it is and how to feed it."""

    path: Path
    algorithm: str  # one of ALGORITHMS
    scale: int
    format: Format

    @property
    def luma_only(self) -> bool:
        """True when the network sees only the Y channel (ESPCN, FSRCNN, LapSRN)."""
        return self.algorithm in LUMA_ALGORITHMS


def parse_model_name(path: Path) -> tuple[Optional[str], Optional[int]]:
    """(algorithm, scale) told by the file name, None where it tells nothing.

    ``FSRCNN-small_x3.pb`` -> ('fsrcnn', 3); ``my_model.onnx`` -> (None, None).
    """
    match = _NAME.match(path.stem)
    if match is None:
        return None, None
    algo = match["algo"].lower()
    return (algo if algo in ALGORITHMS else None), int(match["scale"])


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file, read from the protobuf wire format.

    The onnx package is not a runtime dependency, and the weights (ModelProto.graph) need not be
    parsed to reach the metadata: top-level fields are walked and the graph's bytes skipped.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _metadata_props(memoryview(buf))
    except (OSError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"model.path: {path} is not a readable ONNX file: {exc}") from None


#: ModelProto.metadata_props, and StringStringEntryProto's key and value (onnx.proto).
_METADATA_PROPS, _KEY, _VALUE = 14, 1, 2


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of a protobuf varint at ``pos``."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, object]]:
    """(field number, value) of a protobuf message; length-delimited values as memoryviews."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            yield field, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _metadata_props(buf: memoryview) -> dict[str, str]:
    """ModelProto.metadata_props as a dict."""
    props: dict[str, str] = {}
    for field, value in _fields(buf):
        if field == _METADATA_PROPS and isinstance(value, memoryview):
            entry = {f: bytes(v).decode("utf-8", "replace") for f, v in _fields(value) if isinstance(v, memoryview)}
            props[entry.get(_KEY, "")] = entry.get(_VALUE, "")
    return props


def _metadata_algorithm_scale(meta: dict[str, str], path: Path) -> tuple[Optional[str], Optional[int]]:
    """(algorithm, scale) from srwatch.* metadata, None where absent."""
    algo = meta.get("srwatch.algorithm")
    scale_text = meta.get("srwatch.scale")
    scale: Optional[int] = None
    if scale_text is not None:
        try:
            scale = int(scale_text)
        except ValueError:
            raise ModelLoadError(f"{path}: metadata srwatch.scale is not an integer: {scale_text!r}") from None
    return (algo.lower() if algo else None), scale


def model_format(path: Path) -> Format:
    """'pb' or 'onnx' from the suffix; ModelLoadError for anything else."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelLoadError(
            f"model.path: {path.name} is neither a .pb (TensorFlow, as OpenCV dnn_superres uses) "
            "nor an .onnx file"
        )
    return fmt  # type: ignore[return-value]


def resolve_model(model_cfg: ModelConfig) -> ModelInfo:
    """Resolve algorithm, scale and format of ``model_cfg.path``; raise ModelLoadError if unknown.

    Precedence: explicit config values, then ONNX metadata, then the file name.
    """
    path = Path(model_cfg.path)
    if not path.is_file():
        raise ModelLoadError(f"model.path: no such file: {path}")
    fmt = model_format(path)
    name_algo, name_scale = parse_model_name(path)
    meta_algo: Optional[str] = None
    meta_scale: Optional[int] = None
    if fmt == "onnx":
        meta_algo, meta_scale = _metadata_algorithm_scale(read_onnx_metadata(path), path)
    algorithm = model_cfg.algorithm or meta_algo or name_algo
    scale = model_cfg.scale or meta_scale or name_scale
    if algorithm is None:
        raise ModelLoadError(
            f"cannot tell the algorithm of {path.name} from its name or metadata: "
            f"set model.algorithm ({', '.join(ALGORITHMS)})"
        )
    if algorithm not in ALGORITHMS:
        raise ModelLoadError(
            f"{path.name}: unknown algorithm {algorithm!r}; model.algorithm must be one of {', '.join(ALGORITHMS)}"
        )
    if scale is None:
        raise ModelLoadError(f"cannot tell the scale of {path.name} from its name or metadata: set model.scale")
    if not 2 <= scale <= 8:
        raise ModelLoadError(f"{path.name}: scale {scale} is out of range; model.scale must be 2..8")
    return ModelInfo(path=path, algorithm=algorithm, scale=scale, format=fmt)
