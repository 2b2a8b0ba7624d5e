"""Seconds per input megapixel and peak RSS per engine, with and without tiling.

    python benchmarks/bench_engines.py ../shared/models/FSRCNN_x3.pb --size 100x100
    python benchmarks/bench_engines.py --standin 32x256 --size 100x100
    python benchmarks/bench_engines.py --standin 32x256 --size 1000x1000 --tiles auto --engines openvino

Each (engine, tile) case runs in a fresh child process, so its peak RSS (VmHWM) is its own:
``load MB`` is the RSS after loading the model, ``load peak MB`` the highest RSS while loading
(reading the graph for tile 'auto' included), ``peak MB`` the highest RSS while upscaling (the
high-water mark is reset after loading), and ``forward MB`` = peak - load MB, what upscaling
needed (OpenVINO's per-shape compiled weights included). Timings: one warm-up run (OpenVINO
compiles per input shape), then the median of ``--repeat`` runs.

``--standin BLOCKSxFILTERS`` builds a random-weight EDSR (srwatch/train/model.py, x3,
res_scale 0.1) and exports it (srwatch/train/export.py) to a temp .pb and .onnx: the .onnx is
used by every engine (onnxruntime reads no .pb), or the .pb with ``--standin-format pb``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("opencv", "openvino", "onnxruntime")


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def current_rss_mb() -> float:
    """Resident set size now, in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Highest RSS of this process so far, in MB: VmHWM, which starts afresh at exec.

    (ru_maxrss does not: Linux carries it over from the parent through fork and exec, so a child
    of a big parent would report the parent's peak.)
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_standin(spec: str, out_dir: Path, fmt: str) -> Path:
    """Random-weight EDSR BLOCKSxFILTERS (x3) exported to out_dir; returns the .pb or .onnx path."""
    import torch

    from srwatch.train.export import export_all
    from srwatch.train.model import EDSR, EDSRSpec

    blocks, filters = (int(v) for v in spec.lower().split("x"))
    torch.manual_seed(0)
    model = EDSR(EDSRSpec(scale=3, blocks=blocks, filters=filters, res_scale=0.1))
    pb, onnx_path = export_all(model, out_dir, f"EDSR-standin{blocks}x{filters}_x3")
    return pb if fmt == "pb" else onnx_path


def test_image(width: int, height: int):  # -> np.ndarray
    """A photo-like BGR uint8 image: a Set5 picture resized, else smooth noise."""
    import cv2
    import numpy as np

    sample = REPO.parent / "shared" / "datasets" / "Set5" / "HR" / "butterfly.png"
    img = cv2.imread(str(sample)) if sample.is_file() else None
    if img is None:
        img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)


def run_case(model: Path, engine: str, tile: str, size: tuple[int, int], threads: int,
             max_memory_mb: int, overlap: int, repeat: int, warmup: bool) -> dict:
    """In this (child) process: load, time, measure. Returns the figures."""
    from srwatch.config import ModelConfig, TileConfig
    from srwatch.engine import load_engine

    tile_value = tile if tile in ("auto", "off") else int(tile)
    tile_cfg = TileConfig(size=tile_value, overlap=overlap, max_memory_mb=max_memory_mb)
    img = test_image(*size)
    start_rss = current_rss_mb()
    t0 = time.perf_counter()
    eng = load_engine(ModelConfig(path=model, engine=engine), tile_cfg, threads)
    load_seconds = time.perf_counter() - t0
    load_rss = current_rss_mb()
    load_peak = peak_rss_mb()
    reset_peak_rss()
    if warmup:
        eng.upscale(img)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        eng.upscale(img)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    megapixels = size[0] * size[1] / 1e6
    peak = peak_rss_mb()
    return {
        "engine": engine,
        "tile": f"{eng.tile_size}" if eng.tile_size else "off",
        "seconds": seconds,
        "s_per_mp": seconds / megapixels,
        "load_s": load_seconds,
        "start_mb": start_rss,
        "load_mb": load_rss,
        "load_peak_mb": load_peak,
        "peak_mb": peak,
        "forward_mb": peak - load_rss,
        "bytes_per_px_estimate": eng.bytes_per_input_pixel(),  # may read the graph: after measuring
    }


def run_child(args: argparse.Namespace, model: Path, engine: str, tile: str) -> Optional[dict]:
    """One case in a fresh interpreter; None (and the error printed) if it failed."""
    cmd = [
        sys.executable, __file__, str(model), "--child", engine, "--tiles", tile, "--size", args.size,
        "--threads", str(args.threads), "--max-memory-mb", str(args.max_memory_mb),
        "--overlap", str(args.overlap), "--repeat", str(args.repeat),
    ] + ([] if args.warmup else ["--no-warmup"])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  {engine} tile={tile}: failed ({proc.returncode}): {' | '.join(tail)}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def format_table(model: Path, size: tuple[int, int], threads: int, rows: Sequence[dict]) -> str:
    """Markdown table of the figures."""
    head = (f"{model.name}, {size[0]}x{size[1]} input, {threads} thread(s)\n"
            "| engine | tile | s / input MP | s / image | load MB | load peak MB | peak MB | forward MB "
            "| est. MB per input MP |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [
        f"| {r['engine']} | {r['tile']} | {r['s_per_mp']:.2f} | {r['seconds']:.3f} | {r['load_mb']:.0f} | "
        f"{r['load_peak_mb']:.0f} | {r['peak_mb']:.0f} | {r['forward_mb']:.0f} | "
        f"{r['bytes_per_px_estimate'] * 1e6 / 2**20:.0f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", type=Path, help=".pb or .onnx model file (or use --standin)")
    p.add_argument("--standin", help="BLOCKSxFILTERS: random-weight EDSR x3 stand-in, e.g. 32x256")
    p.add_argument("--standin-format", choices=("onnx", "pb"), default="onnx")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: all three)")
    p.add_argument("--tiles", default="off,auto", help="comma-separated tile sizes: off, auto, or pixels")
    p.add_argument("--size", default="100x100", help="input WIDTHxHEIGHT")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-memory-mb", type=int, default=1024, help="tile.max_memory_mb for 'auto'")
    p.add_argument("--overlap", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every (engine, tile) case and print the table."""
    args = build_parser().parse_args(argv)
    size = parse_size(args.size)
    if args.child:
        figures = run_case(args.model, args.child, args.tiles, size, args.threads,
                           args.max_memory_mb, args.overlap, args.repeat, args.warmup)
        print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory(prefix="srwatch-bench-") as tmp:
        model = args.model
        if args.standin:
            sys.path.insert(0, str(REPO))
            model = build_standin(args.standin, Path(tmp), args.standin_format)
        if model is None:
            print("give a model file or --standin", file=sys.stderr)
            return 2
        rows = []
        for engine in args.engines.split(","):
            if engine == "onnxruntime" and model.suffix == ".pb":
                print("  onnxruntime: skipped (reads no .pb)", file=sys.stderr)
                continue
            for tile in args.tiles.split(","):
                figures = run_child(args, model, engine, tile)
                if figures:
                    rows.append(figures)
                    print(f"  {engine} tile={figures['tile']}: {figures['s_per_mp']:.2f} s/MP, "
                          f"peak {figures['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
        print(format_table(model, size, args.threads, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
