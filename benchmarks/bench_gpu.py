"""Seconds per input megapixel on a GPU: srwatch's onnxruntime engine against PyTorch bf16.

    python benchmarks/bench_gpu.py --out bench-out/gpu.json                 # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --models default --sizes 48x48 --repeat 1   # a smoke run

Issue #9's GPU question: how close does srwatch, running a model through onnxruntime's CUDA
execution provider (``model.engine: onnxruntime``, ``model.device: cuda``, pip install
onnxruntime-gpu), come to the same network run by PyTorch in bf16, the way it was trained? Two
networks, each as an ONNX file for srwatch and as the PyTorch module it was exported from:

- ``default``: the shape of the shipped model (EDSR 16 x 32, x3), random weights, exported by
  srwatch/train/export.py as the shipped file was (timing does not depend on the weights);
- ``standin``: EDSR 32 x 256, x3, res_scale 0.1, random weights: what a user's upstream
  ``EDSR_x3.pb`` costs (the network of FACTS.md's figure: 0.24 s per input MP, bf16, H100).

Contenders per network and input size, timed as the median of ``--repeat`` runs after one
warm-up run (cuDNN picks its algorithms on the first run of a shape):

- ``srwatch f32`` / ``srwatch f16``: ``Engine.upscale`` of a BGR uint8 image through
  srwatch.engine.load_engine (``model.precision`` f32 or f16, ``tile.size`` as given): what a
  worker pays per file, host-side pre- and post-processing and the copies to and from the GPU
  included;
- ``torch bf16 (copies)``: the module under ``torch.autocast(bfloat16)``, channels-last, from a
  float32 host array to a float32 host array (the same copies as srwatch's engine);
- ``torch bf16 (GPU only)``: the same with the input already on the GPU and the output left
  there: the reference figure of FACTS.md.

Each row gives seconds per input MP and, for srwatch, the ratio to ``torch bf16 (copies)``
(issue #9's target: at most 1.5x). GPU memory: PyTorch's own peak for its rows; for
onnxruntime, device memory in use after the runs minus before loading (its arena keeps what
it grew to, so this is its high-water mark).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engines import parse_size, test_image  # noqa: E402

#: Network name -> (blocks, filters, res_scale), all x3.
NETWORKS = {"default": (16, 32, 1.0), "standin": (32, 256, 0.1)}
MIB = 1 << 20


@dataclass
class Row:
    """One contender on one network and input size."""

    network: str
    size: str
    contender: str
    seconds: float  # median per image
    seconds_per_mp: float
    gpu_memory_mib: Optional[float]
    ratio_to_torch: Optional[float] = None
    error: Optional[str] = None


def build_network(name: str, out_dir: Path):  # -> tuple[torch.nn.Module, Path]
    """The PyTorch module (seeded random weights) and its ONNX export, as srwatch exports models."""
    import torch

    from srwatch.train.export import export_onnx
    from srwatch.train.model import EDSR, EDSRSpec

    blocks, filters, res_scale = NETWORKS[name]
    torch.manual_seed(0)
    module = EDSR(EDSRSpec(scale=3, blocks=blocks, filters=filters, res_scale=res_scale)).eval()
    return module, export_onnx(module, out_dir / f"EDSR-{name}{blocks}x{filters}_x3.onnx")


def median_time(run: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    """One warm-up, then the median wall time of `repeat` runs (each ended by `sync`)."""
    run()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_memory_in_use(device: str) -> Optional[int]:
    """Bytes in use on the GPU (all allocators, onnxruntime's too); None on the CPU."""
    if device != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def time_srwatch(onnx_path: Path, precision: str, device: str, tile: str, img: np.ndarray,
                 repeat: int) -> tuple[float, Optional[float]]:
    """srwatch's onnxruntime engine: (median seconds per upscale, device MiB it holds)."""
    from srwatch.config import ModelConfig, TileConfig
    from srwatch.engine import load_engine

    before = device_memory_in_use(device)
    engine = load_engine(
        ModelConfig(path=onnx_path, engine="onnxruntime", device=device, precision=precision),
        TileConfig(size=tile if tile in ("auto", "off") else int(tile)),
        threads=2,
    )
    seconds = median_time(lambda: engine.upscale(img), repeat, lambda: None)
    after = device_memory_in_use(device)
    del engine
    return seconds, (after - before) / MIB if before is not None and after is not None else None


def time_torch(module, device: str, img: np.ndarray, repeat: int, copies: bool) -> tuple[float, Optional[float]]:
    """PyTorch bf16 autocast: (median seconds per forward, peak device MiB)."""
    import torch

    dev = torch.device(device)
    net = module.to(dev).to(memory_format=torch.channels_last)
    host = np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    on_device = torch.from_numpy(host).to(dev).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward() -> object:
        x = torch.from_numpy(host).to(dev).contiguous(memory_format=torch.channels_last) if copies else on_device
        with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            y = net(x)
        return y.float().cpu().numpy() if copies else y

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = median_time(forward, repeat, sync)
    peak = torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None
    module.to("cpu")
    if device == "cuda":
        torch.cuda.empty_cache()
    return seconds, peak


def bench(networks: Sequence[str], sizes: Sequence[tuple[int, int]], device: str, precisions: Sequence[str],
          tile: str, repeat: int) -> list[Row]:
    """Every contender on every network and size; a contender that fails gets a row with its error."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="srwatch-gpu-") as tmp:
        for name in networks:
            module, onnx_path = build_network(name, Path(tmp))
            for width, height in sizes:
                img = test_image(width, height)
                mp = width * height / 1e6
                label = f"{width}x{height}"
                found: list[Row] = []
                cases: list[tuple[str, Callable[[], tuple[float, Optional[float]]]]] = [
                    ("torch bf16 (GPU only)" if device == "cuda" else "torch bf16 (no copies)",
                     lambda: time_torch(module, device, img, repeat, copies=False)),
                    ("torch bf16 (copies)", lambda: time_torch(module, device, img, repeat, copies=True)),
                ]
                cases += [(f"srwatch {p}", lambda p=p: time_srwatch(onnx_path, p, device, tile, img, repeat))
                          for p in precisions]
                for contender, run in cases:
                    try:
                        seconds, memory = run()
                        row = Row(name, label, contender, seconds, seconds / mp, memory)
                    except Exception as exc:  # e.g. no CUDA provider, out of memory: report, go on
                        row = Row(name, label, contender, float("nan"), float("nan"), None,
                                  error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    found.append(row)
                    print(f"  {name} {label} {contender}: "
                          + (row.error or f"{row.seconds:.4f} s, {row.seconds_per_mp:.4f} s/MP"),
                          file=sys.stderr, flush=True)
                torch_row = next((r for r in found if r.contender == "torch bf16 (copies)" and not r.error), None)
                for row in found:
                    if torch_row and row.contender.startswith("srwatch") and not row.error:
                        row.ratio_to_torch = row.seconds / torch_row.seconds
                rows += found
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| network | input | contender | s / image | s / input MP | GPU MiB | vs torch bf16 (copies) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.network} | {r.size} | {r.contender} | {r.error} | | | |")
            continue
        memory = f"{r.gpu_memory_mib:.0f}" if r.gpu_memory_mib is not None else "-"
        ratio = f"{r.ratio_to_torch:.2f}x" if r.ratio_to_torch is not None else ""
        lines.append(f"| {r.network} | {r.size} | {r.contender} | {r.seconds:.4f} | {r.seconds_per_mp:.4f} | "
                     f"{memory} | {ratio} |")
    return "\n".join(lines)


def environment(device: str) -> dict:
    """Versions and the device, for the JSON record."""
    import onnxruntime
    import torch

    env = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "providers": onnxruntime.get_available_providers(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--models", default="default,standin", help="comma-separated: " + ", ".join(NETWORKS))
    p.add_argument("--sizes", default="500x500,1000x1000", help="comma-separated input WIDTHxHEIGHT")
    p.add_argument("--precisions", default="f32,f16", help="srwatch's model.precision values to time")
    p.add_argument("--tile", default="off", help="srwatch's tile.size: off, auto or pixels")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the rows and the environment as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    networks = [n for n in args.models.split(",") if n]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        print(f"bench_gpu: unknown network {unknown[0]!r} ({', '.join(NETWORKS)})", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import onnxruntime

        # onnxruntime-gpu finds CUDA's and cuDNN's libraries in the nvidia-* wheels PyTorch brought.
        if hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    precisions = [p for p in args.precisions.split(",") if p]
    rows = bench(networks, sizes, args.device, precisions, args.tile, args.repeat)
    print(format_rows(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": environment(args.device),
                                        "rows": [asdict(r) for r in rows]}, indent=2))
    return 0 if any(not r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
