"""Post-training INT8 quantization of an EDSR model with NNCF, saved as OpenVINO IR.

    python -m srwatch.quantize models/EDSR-srwatch_x3.onnx                  # -> models/EDSR-srwatch_x3-int8.xml/.bin
    python -m srwatch.quantize models/EDSR-srwatch_x2.onnx --calibration DIR ... --out DIR

Needs the ``quantize`` extra (``pip install srwatch[quantize]``: nncf and openvino). The model is
converted with OpenVINO; NNCF inserts FakeQuantize operations whose ranges come from a
calibration set, and OpenVINO's CPU plugin then runs those convolutions in int8 (AMX/VNNI). The
engine loads the result with ``model.precision: int8`` (engine/openvino.py: ``<stem>-int8.xml``
beside ``model.path``).

Calibration data is made exactly as the model meets images in use and in training: training
images (T91 and BSD100 by default, never the evaluation set) shrunk by the model's scale with
PIL antialiased bicubic (srwatch.train.data.make_pair, the degradation the model was trained to
invert), cut into random LR patches, and fed as the engine feeds EDSR
(srwatch.engine.base.bgr_to_edsr_blob: BGR float 0..255 minus the DIV2K mean, NCHW).

The defaults are the settings of the shipped x3 and x4 files; x2 adds ``--ignore
first,last,skips``. models/README.md ("INT8 and bf16") has the comparison that chose them (the
options reproduce it) and their Set5 quality and speed. The IR keeps the model's dynamic height
and width and records how it was made in its rt_info (``srwatch`` section): a run with the same
inputs and versions writes the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .engine.base import bgr_to_edsr_blob
from .engine.models import parse_model_name, read_onnx_metadata
from .errors import ModelLoadError

log = logging.getLogger("srwatch.quantize")

#: ../shared/datasets next to the checkout: the training sets used for calibration by default.
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DEFAULT_CALIBRATION = (DATASETS / "T91", DATASETS / "BSD100" / "HR")


def int8_path(model: Path, out_dir: Optional[Path] = None) -> Path:
    """Where the quantized IR of ``model`` goes: ``<out_dir or beside>/<stem>-int8.xml``.

    The same rule as the engine's (engine/openvino.py int8_model_path), so ``--out`` defaults
    to exactly the file ``model.precision: int8`` will look for.
    """
    return (out_dir or model.parent) / f"{model.stem}-int8.xml"


def calibration_blobs(
    folders: Sequence[Path], scale: int, patch: int = 96, per_image: int = 1, limit: int = 0, seed: int = 0,
) -> list[np.ndarray]:
    """(1, 3, side, side) EDSR input blobs: random square LR patches of the training images.

    Each image is cropped to a multiple of ``scale`` and shrunk by it (PIL antialiased bicubic,
    as in training); ``per_image`` random crops of ``patch`` x ``patch`` are taken, or of the
    LR image's shorter side when it is smaller (most T91 images at x3): never resized, which
    would feed the model blurred content it does not meet in use. ``limit`` > 0 keeps only that
    many images (evenly spread over the sorted list).
    """
    from .train.data import list_images, load_rgb, make_pair

    paths = list_images(folders)
    if not paths:
        raise FileNotFoundError(f"no images in {', '.join(str(f) for f in folders)}")
    if limit > 0 and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    rng = np.random.default_rng(seed)
    blobs: list[np.ndarray] = []
    for path in paths:
        lr = make_pair(load_rgb(path), scale).lr  # BGR uint8
        h, w = lr.shape[:2]
        side = min(patch, h, w)
        if side < 16:
            continue
        for _ in range(per_image):
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            blobs.append(bgr_to_edsr_blob(np.ascontiguousarray(lr[y : y + side, x : x + side])))
    if not blobs:
        raise ValueError("no calibration image is large enough")
    return blobs


def ignored_names(model: Any, ignore: Sequence[str]) -> list[str]:
    """Operation names for NNCF's IgnoredScope from ``ignore`` items.

    ``first`` / ``last``: the first / last convolution; ``skips``: the residual additions (an
    Add fed by neither a Convolution nor a Constant: not a bias), which keeps the skip path float;
    anything else: convolutions or residual adds named so or under that prefix. OpenVINO names
    the bias-less part of an ONNX Conv after the node (``head/WithoutBiases``,
    ``block3/conv1/WithoutBiases``, ``tail/WithoutBiases`` in srwatch's exports) and keeps Add
    names (``block3/add``; ``body/add`` is the long skip), so ``block15`` or ``tail`` select by
    export name.
    """
    ops = list(model.get_ordered_ops())
    convs = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"]
    # A convolution's bias is an Add fed by the Convolution (and a constant, maybe broadcast).
    skips = [
        op.get_friendly_name() for op in ops
        if op.get_type_name() == "Add"
        and not any(op.input_value(i).get_node().get_type_name() in ("Convolution", "Constant")
                    for i in range(op.get_input_size()))
    ]
    names: list[str] = []
    for item in ignore:
        if item == "first":
            wanted = convs[:1]
        elif item == "last":
            wanted = convs[-1:]
        elif item == "skips":
            wanted = skips
        else:
            wanted = [c for c in convs + skips if c == item or c.startswith(item + "/")]
        if not wanted:
            raise ValueError(f"--ignore {item}: no such operation (convolutions: {', '.join(convs[:3])}, ...)")
        names.extend(w for w in wanted if w not in names)
    return names


def quantize(
    model_path: Path,
    blobs: Sequence[np.ndarray],
    preset: str = "performance",
    bias_correction: str = "none",
    ignore: Sequence[str] = ("first", "last", "body/add"),
    subset_size: Optional[int] = None,
    activations_range: str = "mean_minmax",
    overflow_fix: str = "first_layer_only",
) -> Any:
    """The NNCF-quantized openvino.Model of ``model_path`` (.onnx or .pb), calibrated on ``blobs``.

    ``preset``: 'performance' (symmetric activations) or 'mixed' (asymmetric activations).
    ``bias_correction``: 'fast', 'full' (NNCF's BiasCorrection, slower) or 'none'.
    ``subset_size``: calibration items used (default all).
    ``activations_range``: how activation ranges are taken from the per-item statistics (NNCF's
    RangeEstimatorParametersSet: mean_minmax, NNCF's default, averages each item's min and max;
    minmax takes the global extremes; histogram, mean_quantile, median_minmax).
    ``overflow_fix``: NNCF's OverflowFix (first_layer_only, its default, quantizes the first
    layer's weights to 7 bits for CPUs without VNNI; disable uses all 8 bits; enable: every layer).
    """
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise SystemExit("srwatch quantize needs nncf and openvino: pip install 'srwatch[quantize]'") from None

    # convert_model (not Core.read_model) folds the shape arithmetic the ONNX frontend wraps each
    # bias in (ShapeOf/Concat/Broadcast/Reshape per convolution) into constants: NNCF then sees
    # plain Convolution + bias Add, and the IR stays small and fast with dynamic height/width.
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.convert_model(str(model_path))
    names = ignored_names(model, ignore)

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    advanced = AdvancedQuantizationParameters(
        disable_bias_correction=bias_correction == "none",
        overflow_fix=OverflowFix(overflow_fix),
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, activations_range.upper()),
    )
    return nncf.quantize(
        model,
        nncf.Dataset(list(blobs)),
        preset=presets[preset],
        target_device=nncf.TargetDevice.CPU,
        subset_size=subset_size or len(blobs),
        fast_bias_correction=bias_correction != "full",
        ignored_scope=nncf.IgnoredScope(names=names) if names else None,
        advanced_parameters=advanced,
    )


def save_ir(model: Any, xml: Path, provenance: dict[str, Any]) -> tuple[Path, Path]:
    """Save as OpenVINO IR (``.xml`` + ``.bin``; float constants kept f32) with ``provenance`` in rt_info."""
    import openvino as ov

    for key, value in provenance.items():
        model.set_rt_info(str(value), ["srwatch", key])
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml, xml.with_suffix(".bin")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the source model, recorded in the IR)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shown(folder: Path) -> str:
    """A calibration folder as recorded in the IR: relative to the shared datasets (T91, BSD100/HR), else its name."""
    try:
        return folder.resolve().relative_to(DATASETS.resolve()).as_posix()
    except ValueError:
        return folder.name


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m srwatch.quantize``."""
    p = argparse.ArgumentParser(
        prog="python -m srwatch.quantize",
        description="Post-training INT8 quantization (NNCF) of an EDSR model, saved as OpenVINO IR <stem>-int8.xml.",
    )
    p.add_argument("model", type=Path, help="the f32 model (.onnx, or a .pb OpenVINO reads)")
    p.add_argument("--calibration", type=Path, action="append",
                   help="folder of training images (repeatable; default: ../shared/datasets T91 and BSD100/HR)")
    p.add_argument("--out", type=Path, help="output folder (default: beside the model)")
    p.add_argument("--scale", type=int, help="the model's scale (default: from the file name, _x3 -> 3)")
    p.add_argument("--patch", type=int, default=96, help="LR patch side of a calibration item (default 96)")
    p.add_argument("--per-image", type=int, default=1, help="patches per calibration image (default 1)")
    p.add_argument("--images", type=int, default=0, help="use only this many calibration images (0: all)")
    p.add_argument("--subset-size", type=int, help="calibration items NNCF uses (default: all)")
    p.add_argument("--preset", choices=("performance", "mixed"), default="performance",
                   help="NNCF preset: performance (symmetric activations, default) or mixed (asymmetric)")
    p.add_argument("--bias-correction", choices=("none", "fast", "full"), default="none",
                   help="none (default), or NNCF's fast or full (slower) bias correction")
    p.add_argument("--ignore", default="first,last,body/add",
                   help="comma-separated operations kept in float: first, last (convolution), skips (every "
                        "residual add), or a convolution's or residual add's name (body/add: the long skip); "
                        "'' quantizes everything (default first,last,body/add)")
    p.add_argument("--activations-range", default="mean_minmax",
                   choices=("minmax", "mean_minmax", "median_minmax", "mean_no_outliers_minmax", "mean_quantile",
                            "histogram"),
                   help="how activation ranges come from the calibration statistics (default mean_minmax, NNCF's)")
    p.add_argument("--overflow-fix", default="first_layer_only", choices=("first_layer_only", "disable", "enable"),
                   help="NNCF's OverflowFix (default first_layer_only, NNCF's own default)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: calibrate, quantize, save; prints the paths written. Exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model: Path = args.model
    if not model.is_file():
        print(f"srwatch quantize: no such file: {model}", file=sys.stderr)
        return 2
    scale = args.scale or parse_model_name(model)[1]
    if scale is None and model.suffix.lower() == ".onnx":
        try:
            scale = int(read_onnx_metadata(model).get("srwatch.scale", ""))
        except (ModelLoadError, ValueError):
            scale = None
    if scale is None:
        print(f"srwatch quantize: cannot tell the scale of {model.name}: pass --scale", file=sys.stderr)
        return 2
    folders = args.calibration or list(DEFAULT_CALIBRATION)
    ignore = [item for item in args.ignore.split(",") if item]
    try:
        started = time.monotonic()
        blobs = calibration_blobs(folders, scale, args.patch, args.per_image, args.images, args.seed)
        log.info("%d calibration patches of up to %dx%d from %s", len(blobs), args.patch, args.patch,
                 ", ".join(str(f) for f in folders))
        quantized = quantize(model, blobs, args.preset, args.bias_correction, ignore, args.subset_size,
                             args.activations_range, args.overflow_fix)
    except (FileNotFoundError, ValueError) as exc:
        print(f"srwatch quantize: {exc}", file=sys.stderr)
        return 2
    import nncf

    provenance = {
        "source": model.name,
        "source_sha256": sha256_file(model),
        "nncf": nncf.__version__,
        "settings": json.dumps({
            "scale": scale, "calibration": [_shown(Path(f)) for f in folders], "items": len(blobs),
            "patch": args.patch, "per_image": args.per_image, "images": args.images,
            "subset_size": args.subset_size or len(blobs), "preset": args.preset,
            "bias_correction": args.bias_correction, "ignore": ignore, "seed": args.seed,
            "activations_range": args.activations_range, "overflow_fix": args.overflow_fix,
        }, sort_keys=True),
    }
    xml, binary = save_ir(quantized, int8_path(model, args.out), provenance)
    log.info("wrote %s (%d bytes) and %s (%d bytes) in %.1f s", xml, xml.stat().st_size, binary,
             binary.stat().st_size, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
