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
warm-up run (cuDNN picks its algorithms on the first run of a shape), and on ``--mixed N``
images of N different sizes (a hot folder's photos), each run once, after a warm-up on
another size: there every new size pays onnxruntime's cuDNN algorithm search, which
``--search`` sets (``EXHAUSTIVE``, onnxruntime's default, and ``HEURISTIC``; srwatch's
``engine.onnxruntime.CUDA_PROVIDER_OPTIONS``):

- ``srwatch f32`` / ``srwatch f16`` (with the search mode on a GPU): ``Engine.upscale`` of a BGR uint8 image through
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


def mixed_images(count: int, around: tuple[int, int]) -> list[np.ndarray]:
    """`count` photo-like images, each a different size within 20 % of `around` (seeded)."""
    rng = np.random.default_rng(9)
    sizes: set[tuple[int, int]] = set()
    while len(sizes) < count:
        sizes.add((int(around[0] * rng.uniform(0.8, 1.2)), int(around[1] * rng.uniform(0.8, 1.2))))
    return [test_image(w, h) for w, h in sorted(sizes)]


def time_srwatch(onnx_path: Path, precision: str, device: str, tile: str, images: Sequence[np.ndarray],
                 repeat: int, search: Optional[str]) -> tuple[float, Optional[float]]:
    """srwatch's onnxruntime engine: (seconds per upscale, device MiB it holds).

    One image: the median of `repeat` after a warm-up. Several (each a new size): each once,
    after a warm-up on a size of its own, and the mean.
    """
    from srwatch.config import ModelConfig, TileConfig
    from srwatch.engine import load_engine
    from srwatch.engine import onnxruntime as ort_engine

    ort_engine.CUDA_PROVIDER_OPTIONS = {"cudnn_conv_algo_search": search} if search else {}
    before = device_memory_in_use(device)
    engine = load_engine(
        ModelConfig(path=onnx_path, engine="onnxruntime", device=device, precision=precision),
        TileConfig(size=tile if tile in ("auto", "off") else int(tile)),
        threads=2,
    )
    if len(images) == 1:
        seconds = median_time(lambda: engine.upscale(images[0]), repeat, lambda: None)
    else:
        engine.upscale(test_image(64, 48))
        t0 = time.perf_counter()
        for img in images:
            engine.upscale(img)
        seconds = (time.perf_counter() - t0) / len(images)
    after = device_memory_in_use(device)
    del engine
    return seconds, (after - before) / MIB if before is not None and after is not None else None


def time_torch(module, device: str, images: Sequence[np.ndarray], repeat: int,
               copies: bool) -> tuple[float, Optional[float]]:
    """PyTorch bf16 autocast: (seconds per forward, peak device MiB); several images as in time_srwatch."""
    import torch

    dev = torch.device(device)
    net = module.to(dev).to(memory_format=torch.channels_last)
    hosts = [np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0) for img in images]
    on_device = [torch.from_numpy(h).to(dev).contiguous(memory_format=torch.channels_last) for h in hosts]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward(i: int = 0) -> object:
        x = torch.from_numpy(hosts[i]).to(dev).contiguous(memory_format=torch.channels_last) if copies else on_device[i]
        with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            y = net(x)
        return y.float().cpu().numpy() if copies else y

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if len(images) == 1:
        seconds = median_time(forward, repeat, sync)
    else:
        t0 = time.perf_counter()
        for i in range(len(images)):
            forward(i)
        sync()
        seconds = (time.perf_counter() - t0) / len(images)
    peak = torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None
    module.to("cpu")
    if device == "cuda":
        torch.cuda.empty_cache()
    return seconds, peak


def bench(networks: Sequence[str], sizes: Sequence[tuple[int, int]], device: str, precisions: Sequence[str],
          tile: str, repeat: int, searches: Sequence[str] = (), mixed: int = 0) -> list[Row]:
    """Every contender on every network and size; a contender that fails gets a row with its error."""
    rows: list[Row] = []
    workloads: list[tuple[str, list[np.ndarray]]] = [(f"{w}x{h}", [test_image(w, h)]) for w, h in sizes]
    if mixed > 1 and sizes:
        workloads.append((f"{mixed} sizes", mixed_images(mixed, sizes[0])))
    modes: list[Optional[str]] = list(searches) if device == "cuda" and searches else [None]
    with tempfile.TemporaryDirectory(prefix="srwatch-gpu-") as tmp:
        for name in networks:
            module, onnx_path = build_network(name, Path(tmp))
            for label, images in workloads:
                mp = sum(img.shape[0] * img.shape[1] for img in images) / len(images) / 1e6
                found: list[Row] = []
                cases: list[tuple[str, Callable[[], tuple[float, Optional[float]]]]] = [
                    ("torch bf16 (GPU only)" if device == "cuda" else "torch bf16 (no copies)",
                     lambda: time_torch(module, device, images, repeat, copies=False)),
                    ("torch bf16 (copies)", lambda: time_torch(module, device, images, repeat, copies=True)),
                ]
                cases += [(f"srwatch {p}" + (f" {m.lower()}" if m else ""),
                           lambda p=p, m=m: time_srwatch(onnx_path, p, device, tile, images, repeat, m))
                          for p in precisions for m in modes]
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
    p.add_argument("--search", default="EXHAUSTIVE,HEURISTIC",
                   help="on a GPU: onnxruntime's cudnn_conv_algo_search values to time srwatch with")
    p.add_argument("--mixed", type=int, default=8,
                   help="also N images of N sizes around the first --sizes, each run once (0: not)")
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
        import torch  # noqa: F401  - loads CUDA's and cuDNN's libraries from PyTorch's nvidia-* wheels

        # onnxruntime-gpu 1.21+ can also look for them there itself.
        if hasattr(onnxruntime, "preload_dlls"):
            try:
                onnxruntime.preload_dlls()
            except Exception as exc:  # the libraries torch loaded serve as well
                print(f"bench_gpu: onnxruntime.preload_dlls: {exc}", file=sys.stderr)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    precisions = [p for p in args.precisions.split(",") if p]
    searches = [m.upper() for m in args.search.split(",") if m]
    rows = bench(networks, sizes, args.device, precisions, args.tile, args.repeat, searches, args.mixed)
    print(format_rows(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": environment(args.device),
                                        "rows": [asdict(r) for r in rows]}, indent=2))
    return 0 if any(not r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
