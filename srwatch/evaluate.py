"""Evaluation protocol: Y-channel PSNR / SSIM of super-resolution models on Set5.

Protocol (the one behind the figures in ../shared/README.md):

* HR images are cropped to a multiple of the scale (top-left kept);
* LR = PIL ``Image.resize((w // s, h // s), Image.BICUBIC)`` of the HR (PIL antialiases when
  downscaling);
* the model's uint8 output is compared with the HR on the Y channel of ITU-R BT.601 (MATLAB
  ``rgb2ycbcr``: Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in 0..1), kept in
  float, with ``s`` pixels cropped from every border;
* PSNR with peak 255; SSIM of Wang et al. (11x11 gaussian window, sigma 1.5, K1 0.01, K2 0.03,
  valid region only).

Rows: ``bicubic`` (PIL bicubic upscaling of the same LR) and one row per model file: upstream
OpenCV ``.pb`` files through ``cv2.dnn_superres`` (algorithm and scale from the file name,
``FSRCNN-small_x3.pb`` -> ``fsrcnn``, 3), our ``.onnx`` files through ``cv2.dnn`` with EDSR
pre/post processing (scale from the file's metadata).

Run as ``python -m srwatch.evaluate MODEL.pb ... --scale 3`` or ``srwatch eval``.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from .engine.models import DIV2K_MEAN_BGR  # EDSR files take and give BGR minus this mean

#: Default Set5 location: ../shared next to the project checkout.
DEFAULT_DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Set5" / "HR"


#: Upstream dnn_superres file names: ``<ALGO>[-small]_x<scale>.pb``.
_UPSTREAM_NAME = re.compile(r"^(?P<algo>[A-Za-z]+)(?:-[A-Za-z]+)?_x(?P<scale>\d+)$")

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")

Upscaler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ImageScore:
    """PSNR / SSIM of one output image against its HR reference."""

    image: str
    psnr: float  # in dB
    ssim: float
    seconds: float  # upscaling time only
    input_megapixels: float


@dataclass
class MethodResult:
    """All image scores of one method (bicubic or a model file)."""

    name: str
    scores: list[ImageScore] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.scores]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.scores]))

    @property
    def seconds_per_megapixel(self) -> float:
        """Upscaling seconds per input (LR) megapixel over the whole set."""
        return sum(s.seconds for s in self.scores) / sum(s.input_megapixels for s in self.scores)


# --- data -------------------------------------------------------------------------------------


def list_images(dataset: Path) -> list[Path]:
    """Image files of a dataset folder, sorted by name."""
    files = sorted(p for p in dataset.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {dataset}")
    return files


def load_hr_lr(path: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HR cropped to a multiple of ``scale`` and its PIL-bicubic LR, both uint8 RGB."""
    hr = Image.open(path).convert("RGB")
    w, h = hr.size
    w, h = w - w % scale, h - h % scale
    hr = hr.crop((0, 0, w, h))
    lr = hr.resize((w // scale, h // scale), Image.BICUBIC)
    return np.asarray(hr), np.asarray(lr)


# --- metrics ----------------------------------------------------------------------------------


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB rgb2ycbcr, in 16..235, float64 (not rounded)."""
    rgb = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """``img`` without ``border`` pixels on every side."""
    return img[border:-border, border:-border] if border > 0 else img


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak * peak / mse))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """SSIM of Wang et al. 2004 on one channel: 11x11 gaussian (sigma 1.5), valid region."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        # Drop the 5 px where the window leaves the image, as the reference code ('valid').
        return cv2.GaussianBlur(x, (11, 11), 1.5)[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


# --- models -----------------------------------------------------------------------------------


def parse_model_name(path: Path) -> tuple[str, int]:
    """(algorithm, scale) from an upstream file name: ``FSRCNN-small_x3.pb`` -> ('fsrcnn', 3)."""
    match = _UPSTREAM_NAME.match(path.stem)
    if match is None:
        raise ValueError(f"cannot tell algorithm and scale from {path.name!r}; pass --algorithm/--scale")
    return match["algo"].lower(), int(match["scale"])


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file (``srwatch.algorithm``, ``srwatch.scale``, ...)."""
    import onnx  # only needed for .onnx files

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def model_algorithm_scale(path: Path) -> tuple[str, int]:
    """(algorithm, scale) of a model file: ONNX metadata first, else the upstream file name."""
    if path.suffix == ".onnx":
        meta = read_onnx_metadata(path)
        if "srwatch.algorithm" in meta and "srwatch.scale" in meta:
            return meta["srwatch.algorithm"], int(meta["srwatch.scale"])
    return parse_model_name(path)


@functools.lru_cache(maxsize=8)
def load_model(path: str, algorithm: str, scale: int) -> cv2.dnn_superres.DnnSuperResImpl | cv2.dnn.Net:
    """The loaded model, once per (file, algorithm, scale): dnn_superres for .pb, cv2.dnn for .onnx."""
    if path.endswith(".onnx"):
        if algorithm != "edsr":
            raise ValueError(f"{path}: only EDSR ONNX files are supported, not {algorithm!r}")
        return cv2.dnn.readNet(path)
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(path)
    sr.setModel(algorithm, scale)
    return sr


def run_edsr_onnx(net: cv2.dnn.Net, img_bgr: np.ndarray) -> np.ndarray:
    """EDSR ONNX forward pass: uint8 BGR -> float BGR, the mean handled as dnn_superres does."""
    mean = np.asarray(DIV2K_MEAN_BGR, dtype=np.float32)
    blob = (img_bgr.astype(np.float32) - mean).transpose(2, 0, 1)[None]
    net.setInput(np.ascontiguousarray(blob))
    return net.forward()[0].transpose(1, 2, 0) + mean


def upscale_with_model(path: Path | str, img_bgr: np.ndarray, algorithm: str, scale: int) -> np.ndarray:
    """Upscale a uint8 BGR image with a model file (.pb via dnn_superres, .onnx EDSR via cv2.dnn)."""
    model = load_model(str(path), algorithm, scale)
    if isinstance(model, cv2.dnn_superres.DnnSuperResImpl):
        return model.upsample(img_bgr)
    # Round, then saturate, as convertTo(CV_8U) does in dnn_superres.
    return np.clip(np.rint(run_edsr_onnx(model, img_bgr)), 0, 255).astype(np.uint8)


def bicubic_upscaler(scale: int) -> Upscaler:
    """PIL bicubic upscaling by ``scale``, on uint8 RGB."""

    def upscale(lr_rgb: np.ndarray) -> np.ndarray:
        h, w = lr_rgb.shape[:2]
        return np.asarray(Image.fromarray(lr_rgb).resize((w * scale, h * scale), Image.BICUBIC))

    return upscale


def model_upscaler(path: Path, algorithm: str, scale: int) -> Upscaler:
    """Model upscaling on uint8 RGB (the models work in BGR)."""
    load_model(str(path), algorithm, scale)  # load now: fail early and keep loading out of --time

    def upscale(lr_rgb: np.ndarray) -> np.ndarray:
        out_bgr = upscale_with_model(path, np.ascontiguousarray(lr_rgb[..., ::-1]), algorithm, scale)
        return out_bgr[..., ::-1]

    return upscale


# --- protocol ---------------------------------------------------------------------------------


def score_image(name: str, hr: np.ndarray, lr: np.ndarray, upscale: Upscaler, scale: int) -> ImageScore:
    """Upscale one LR image and score it against its HR on Y with a ``scale`` px border."""
    start = time.perf_counter()
    sr = upscale(lr)
    seconds = time.perf_counter() - start
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: output {sr.shape} does not match HR {hr.shape}")
    y_sr, y_hr = shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale)
    return ImageScore(name, psnr(y_sr, y_hr), ssim(y_sr, y_hr), seconds, lr.shape[0] * lr.shape[1] / 1e6)


def evaluate(methods: dict[str, Upscaler], dataset: Path, scale: int) -> list[MethodResult]:
    """Score every method on every image of ``dataset`` at ``scale``; bicubic is not implied."""
    results = [MethodResult(name) for name in methods]
    for path in list_images(dataset):
        hr, lr = load_hr_lr(path, scale)
        for result, upscale in zip(results, methods.values()):
            result.scores.append(score_image(path.stem, hr, lr, upscale, scale))
    return results


def build_methods(
    models: Sequence[Path], scale: int | None, algorithm: str | None
) -> tuple[int, dict[str, Upscaler]]:
    """The scale to evaluate at and the methods: bicubic, then one per model file."""
    resolved: list[tuple[Path, str, int]] = []
    for path in models:
        algo, file_scale = (algorithm, scale) if algorithm and scale else model_algorithm_scale(path)
        resolved.append((path, algorithm or algo, scale or file_scale))
    scales = {s for _, _, s in resolved} | ({scale} if scale else set())
    if len(scales) > 1:
        raise ValueError(f"models have different scales {sorted(scales)}; evaluate them separately")
    if not scales:
        raise ValueError("no model files: pass --scale to evaluate bicubic alone")
    common = scales.pop()
    methods: dict[str, Upscaler] = {"bicubic": bicubic_upscaler(common)}
    for path, algo, s in resolved:
        methods[path.name] = model_upscaler(path, algo, s)
    return common, methods


def format_table(results: Sequence[MethodResult], with_time: bool = False) -> str:
    """Markdown table: one row per method, PSNR/SSIM per image then the mean."""
    images = [s.image for s in results[0].scores]
    header = ["method", *images, "mean PSNR", "mean SSIM"] + (["s/input MP"] if with_time else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.name] + [f"{s.psnr:.2f} / {s.ssim:.4f}" for s in r.scores]
        cells += [f"{r.mean_psnr:.2f}", f"{r.mean_ssim:.4f}"]
        if with_time:
            cells.append(f"{r.seconds_per_megapixel:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``srwatch eval``."""
    parser = argparse.ArgumentParser(
        prog="srwatch eval",
        description="Y-channel PSNR/SSIM on Set5 (scale-px border, PIL bicubic LR) of bicubic and model files.",
    )
    parser.add_argument("models", nargs="*", type=Path, help=".pb (dnn_superres) or .onnx (EDSR) files")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="folder of HR images")
    parser.add_argument("--scale", type=int, help="override the scale read from the model files")
    parser.add_argument("--algorithm", help="override the dnn_superres algorithm (edsr, espcn, fsrcnn, lapsrn)")
    parser.add_argument("--time", action="store_true", help="also report seconds per input megapixel")
    return parser


def main_eval(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``srwatch eval``; prints the table and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        scale, methods = build_methods(args.models, args.scale, args.algorithm)
        results = evaluate(methods, args.dataset, scale)
    except (ValueError, FileNotFoundError, cv2.error) as exc:
        print(f"srwatch eval: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dataset} x{scale}: Y PSNR (dB) / SSIM, {scale} px border")
    print(format_table(results, with_time=args.time))
    return 0


if __name__ == "__main__":
    sys.exit(main_eval())
