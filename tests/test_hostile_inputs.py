"""Every hostile input (tests/hostile.py) through the real Processor with the shipped default model.

Each ends either in a result (decodable, scale x the input as seen, the expected format) or in
exactly the JobError subclass of its quarantine reason: never another exception, and never
more than a bounded amount of memory (peak RSS growth measured per case).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import pytest
from PIL import Image

import hostile
from hostile import HOSTILE, Case
from srwatch import errors
from srwatch.config import Config
from srwatch.errors import JobError
from srwatch.process import Processor, Rendered

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "EDSR-srwatch_x3.onnx"

#: Peak RSS growth allowed for one case, in bytes. The largest result here is under 2 MB and
#: the default model's tiles need tens of MB; a decoder that inflated a bomb, or an allocation
#: sized from a lying header, would need GBs.
MAX_GROWTH = 64 * 2**20

#: reason code -> the JobError subclass that carries it.
CLASS_FOR_REASON: dict[str, type[JobError]] = {}


def _collect(cls: type[JobError]) -> None:
    CLASS_FOR_REASON.setdefault(cls.reason, cls)
    for sub in cls.__subclasses__():
        _collect(sub)


_collect(JobError)


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> Processor:
    """The daemon's default configuration: default model, engine auto, tile auto, default limits."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {name: str(root / name) for name in ("inbox", "outbox", "quarantine", "archive")}
    cfg = Config.model_validate({"paths": paths, "model": {"path": str(DEFAULT_MODEL)}})
    assert cfg.model.engine == "auto" and cfg.tile.size == "auto"
    return Processor(cfg, threads=1)


def _status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_growth(step: Callable[[], object]) -> tuple[object, Optional[int]]:
    """(what step() returned or raised, its peak RSS growth in bytes or None if not measurable)."""
    before = _status_bytes("VmRSS")
    measurable = before is not None and _reset_peak()
    try:
        outcome: object = step()
    except Exception as exc:  # judged by the caller
        outcome = exc
    peak = _status_bytes("VmHWM") if measurable else None
    return outcome, (peak - before if peak is not None and before is not None else None)


def test_the_catalogue() -> None:
    """At least 30 kinds, unique names, known reasons, small, and the same bytes every time."""
    assert len(HOSTILE) >= 30
    assert len({case.name for case in HOSTILE}) == len(HOSTILE)
    for case in HOSTILE:
        assert case.expect is None or case.expect in errors.REASON_CODES, case.name
        assert (case.size is not None and case.ext is not None) == (case.expect is None), case.name
        assert len(case.data) <= 256 * 1024, case.name
    again = {case.name: case.data for case in hostile._cases()}
    assert all(again[case.name] == case.data for case in HOSTILE)


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_hostile_input(processor: Processor, tmp_path: Path, case: Case) -> None:
    src = tmp_path / case.filename
    src.write_bytes(case.data)
    outcome, growth = peak_growth(lambda: processor.process(src, max_bytes=len(case.data)))
    if growth is not None:
        assert growth <= MAX_GROWTH, f"{case.name}: peak RSS grew {growth / 2**20:.0f} MB"

    if case.expect is not None:
        expected = CLASS_FOR_REASON[case.expect]
        assert type(outcome) is expected, f"{case.name}: expected {expected.__name__}, got {outcome!r}"
        return

    if isinstance(outcome, BaseException):
        raise AssertionError(f"{case.name}: expected a result, got {outcome!r}") from outcome
    assert isinstance(outcome, Rendered)
    scale = processor.scale
    width, height = case.size
    assert outcome.input_size == (width, height)
    assert outcome.output_size == (width * scale, height * scale)
    assert outcome.ext == case.ext
    pixels = cv2.imdecode(np.frombuffer(outcome.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, f"{case.name}: the result does not decode"
    assert (pixels.shape[1], pixels.shape[0]) == outcome.output_size
    with Image.open(io.BytesIO(outcome.data)) as im:  # a second decoder agrees on the size
        assert im.size == outcome.output_size
        im.load()


def test_format_fallbacks_are_noted(processor: Processor, tmp_path: Path) -> None:
    """The too-wide-for-JPEG/WebP cases become PNG before inference, and say so."""
    for name in ("jpeg_too_wide_for_jpeg", "webp_too_wide_for_webp"):
        case = next(c for c in HOSTILE if c.name == name)
        src = tmp_path / case.filename
        src.write_bytes(case.data)
        rendered = processor.process(src)
        assert rendered.ext == ".png"
        assert any("instead of" in note and "px per side" in note for note in rendered.notes), rendered.notes


def test_idat_bomb_names_the_output_limit(processor: Processor, tmp_path: Path) -> None:
    case = next(c for c in HOSTILE if c.name == "png_idat_bomb")
    src = tmp_path / case.filename
    src.write_bytes(case.data)
    with pytest.raises(errors.TooManyPixels, match="limits.max_output_pixels"):
        processor.process(src)
    assert os.path.getsize(src) < 64 * 1024
