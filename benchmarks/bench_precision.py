"""Model precisions side by side: Set5 quality per scale, and speed, interleaved.

    python benchmarks/bench_precision.py                          # quality x2/x3/x4, then speed (x3, 500x500)
    python benchmarks/bench_precision.py --no-speed --scales 3
    python benchmarks/bench_precision.py --no-quality --threads 1,2 --rounds 15
    python benchmarks/bench_precision.py --engine onnxruntime --device cuda   # f32 vs f16 on a GPU

Quality: the project's Set5 protocol (srwatch/evaluate.py: PIL bicubic LR, BT.601 Y-PSNR with a
``scale`` px border) on the output of the real engine (srwatch.engine.load_engine, tile off;
``--engine openvino``: ``model.precision`` f32 / bf16 / int8, ``--engine onnxruntime``: f32 /
f16, ``--device`` for model.device), plus each precision's Y-PSNR against the f32
output (how close it stays to the reference). int8 is the ``<stem>-int8.xml`` shipped beside
``models/EDSR-srwatch_x<scale>.onnx``; a scale without one is reported as missing.

Speed: every (threads, precision) engine is loaded in this one process and warmed up, then each
round times one upscale of a 500x500 photo-like input with every engine, in a rotated order. A
busy machine slows all of them alike within a round, so the per-round ratios to f32 (and their
median) stay fair when other work shares the CPU; medians of the seconds are reported too.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from srwatch import evaluate as ev  # noqa: E402
from srwatch.config import ModelConfig, TileConfig  # noqa: E402
from srwatch.engine import load_engine  # noqa: E402
from srwatch.engine.base import Engine  # noqa: E402
from srwatch.engine.openvino import int8_model_path  # noqa: E402
from srwatch.errors import ModelLoadError  # noqa: E402

#: The precisions each engine offers (the default --precisions).
PRECISIONS = {"openvino": ("f32", "bf16", "int8"), "onnxruntime": ("f32", "f16")}
OFF = TileConfig(size="off")


def model_file(models_dir: Path, scale: int) -> Path:
    """The f32 model of a scale: models/EDSR-srwatch_x<scale>.onnx."""
    return models_dir / f"EDSR-srwatch_x{scale}.onnx"


def load(model: Path, precision: str, threads: int, engine: str = "openvino", device: str = "cpu") -> Optional[Engine]:
    """The engine at ``precision``, or None when int8 has no IR beside the model."""
    if precision == "int8" and not int8_model_path(model).is_file():
        return None
    return load_engine(ModelConfig(path=model, engine=engine, device=device, precision=precision), OFF, threads)


def rgb_upscaler(engine: Engine) -> ev.Upscaler:
    """The engine as an evaluate.Upscaler (uint8 RGB in and out; engines work in BGR)."""
    def upscale(lr_rgb: np.ndarray) -> np.ndarray:
        return engine.upscale(np.ascontiguousarray(lr_rgb[..., ::-1]))[..., ::-1]

    return upscale


# --- quality ----------------------------------------------------------------------------------


def quality(models_dir: Path, scale: int, precisions: Sequence[str], dataset: Path, threads: int,
            engine: str = "openvino", device: str = "cpu") -> dict:
    """Set5 mean Y-PSNR/SSIM per precision and the mean Y-PSNR against the f32 output."""
    model = model_file(models_dir, scale)
    engines = {p: load(model, p, threads, engine, device) for p in precisions}
    methods: dict[str, ev.Upscaler] = {"bicubic": ev.bicubic_upscaler(scale)}
    methods.update({p: rgb_upscaler(e) for p, e in engines.items() if e is not None})
    results = {r.name: r for r in ev.evaluate(methods, dataset, scale)}
    # Agreement with f32, on the same protocol (Y, border cropped).
    versus: dict[str, list[float]] = {p: [] for p in methods if p not in ("bicubic", "f32")}
    if "f32" in methods:
        for path in ev.list_images(dataset):
            _, lr = ev.load_hr_lr(path, scale)
            ref = ev.shave(ev.rgb_to_y(methods["f32"](lr)), scale)
            for p in versus:
                versus[p].append(ev.psnr(ev.shave(ev.rgb_to_y(methods[p](lr)), scale), ref))
    return {
        "scale": scale,
        "psnr": {name: r.mean_psnr for name, r in results.items()},
        "ssim": {name: r.mean_ssim for name, r in results.items()},
        "per_image": {name: {s.image: s.psnr for s in r.scores} for name, r in results.items()},
        "vs_f32": {p: float(np.mean(v)) for p, v in versus.items()},
        "vs_f32_min": {p: float(np.min(v)) for p, v in versus.items()},
        "missing": [p for p, e in engines.items() if e is None],
    }


def format_quality(rows: Sequence[dict], precisions: Sequence[str]) -> str:
    """Markdown: PSNR/SSIM per scale and precision, the int8/bf16 loss and agreement with f32."""
    head = "| scale | bicubic | " + " | ".join(f"{p} PSNR / SSIM" for p in precisions)
    others = [p for p in precisions if p != "f32"]
    head += "".join(f" | {p} - f32 (dB) | {p} vs f32 output (dB, mean / min)" for p in others) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        psnr, ssim = row["psnr"], row["ssim"]
        cells = [f"x{row['scale']}", f"{psnr['bicubic']:.2f}"]
        cells += [f"{psnr[p]:.3f} / {ssim[p]:.4f}" if p in psnr else "missing" for p in precisions]
        for p in others:
            if p in psnr and "f32" in psnr:
                cells += [f"{psnr[p] - psnr['f32']:+.3f}", f"{row['vs_f32'][p]:.1f} / {row['vs_f32_min'][p]:.1f}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- speed ------------------------------------------------------------------------------------


def speed(model: Path, precisions: Sequence[str], threads_list: Sequence[int], size: tuple[int, int],
          rounds: int, engine_name: str = "openvino", device: str = "cpu") -> dict:
    """Interleaved timing: {(threads, precision): [seconds per round]}."""
    from bench_engines import test_image

    img = test_image(*size)
    engines = {}
    for threads in threads_list:
        for p in precisions:
            engine = load(model, p, threads, engine_name, device)
            if engine is None:
                print(f"  {p}: no {int8_model_path(model).name}; skipped", file=sys.stderr)
                continue
            engine.upscale(img)  # compile for this shape, warm up
            engines[(threads, p)] = engine
    keys = list(engines)
    times: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate: no engine always goes first
        for key in order:
            t0 = time.perf_counter()
            engines[key].upscale(img)
            times[key].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{t}t {p} {times[(t, p)][-1]:.3f}" for t, p in keys),
              file=sys.stderr, flush=True)
    return times


def format_speed(times: dict, precisions: Sequence[str], threads_list: Sequence[int], size: tuple[int, int],
                 model: Path) -> str:
    """Markdown: median s/image per precision and threads, speed-ups over f32 and bf16 (paired per round)."""
    lines = [f"{model.name}, {size[0]}x{size[1]} input, median of {len(next(iter(times.values())))} interleaved rounds",
             "| threads | precision | s / image (median) | min | speed-up vs f32 | vs bf16 |",
             "|---|---|---|---|---|---|"]

    def paired(base: Optional[list[float]], t: list[float]) -> str:
        """Median of the per-round ratios base / t (same round: same machine load)."""
        return f"{statistics.median(b / x for b, x in zip(base, t)):.2f}x" if base else ""

    for threads in threads_list:
        for p in precisions:
            t = times.get((threads, p))
            if t is None:
                continue
            lines.append(f"| {threads} | {p} | {statistics.median(t):.3f} | {min(t):.3f} | "
                         f"{paired(times.get((threads, 'f32')), t)} | {paired(times.get((threads, 'bf16')), t)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    p.add_argument("--scales", default="2,3,4", help="quality: comma-separated scales (default 2,3,4)")
    p.add_argument("--engine", choices=tuple(PRECISIONS), default="openvino")
    p.add_argument("--device", choices=("cpu", "cuda", "gpu"), default="cpu", help="model.device")
    p.add_argument("--precisions", help="comma-separated (default: every precision the engine offers)")
    p.add_argument("--dataset", type=Path, default=ev.DEFAULT_DATASET, help="Set5 HR folder")
    p.add_argument("--quality-threads", type=int, default=2)
    p.add_argument("--speed-scales", default="3", help="speed: comma-separated scales (default 3)")
    p.add_argument("--size", default="500x500", help="speed: input WIDTHxHEIGHT")
    p.add_argument("--threads", default="2,1", help="speed: comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--no-quality", dest="quality", action="store_false")
    p.add_argument("--no-speed", dest="speed", action="store_false")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = [p for p in (args.precisions or ",".join(PRECISIONS[args.engine])).split(",") if p]
    try:
        if args.quality:
            rows = []
            for scale in (int(s) for s in args.scales.split(",")):
                rows.append(quality(args.models_dir, scale, precisions, args.dataset, args.quality_threads,
                                    args.engine, args.device))
                print(f"  x{scale}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1]["psnr"].items()),
                      file=sys.stderr, flush=True)
            print(f"Set5 Y-PSNR (dB) / SSIM, {args.engine} engine on {args.device}, {args.dataset}")
            print(format_quality(rows, precisions))
            print()
        if args.speed:
            width, _, height = args.size.lower().partition("x")
            size = (int(width), int(height))
            threads_list = [int(t) for t in args.threads.split(",")]
            for scale in (int(s) for s in args.speed_scales.split(",")):
                model = model_file(args.models_dir, scale)
                times = speed(model, precisions, threads_list, size, args.rounds, args.engine, args.device)
                print(format_speed(times, precisions, threads_list, size, model))
                print()
    except (ModelLoadError, FileNotFoundError) as exc:
        print(f"bench_precision: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
