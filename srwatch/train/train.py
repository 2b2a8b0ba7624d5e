"""Train an EDSR model on T91 + BSD100, validating on Set5; checkpoints and resumes.

    python -m srwatch.train.train --scale 3 --out runs/x3 --steps 30000 --max-minutes 60

Run it again with the same --out to continue from the last checkpoint (the patch generator,
optimiser, EMA and schedule all resume, so pieces add up to one deterministic run).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate import psnr, rgb_to_y, shave
from .data import PatchSampler, build_pairs, list_images, load_rgb, make_pair
from .model import EDSR, EDSRSpec, mean_tensor

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@dataclass
class TrainArgs:
    """Everything that defines a run (saved in the checkpoint)."""

    scale: int
    blocks: int
    filters: int
    res_scale: float
    steps: int
    batch: int
    patch: int
    lr: float
    warmup: int
    l2_from: float  # fraction of the run after which the loss switches from L1 to L2 (PSNR)
    ema: float
    seed: int
    zooms: tuple[float, ...]
    train_dirs: tuple[str, ...]
    val_dir: str
    init_from: Optional[str]  # checkpoint whose body initialises this run (e.g. x3 -> x2)


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[TrainArgs, argparse.Namespace]:
    """Command line -> (run definition, session options)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--res-scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=48, help="LR patch side, in pixels")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--l2-from", type=float, default=0.8)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--zooms", default="1.0,0.85,0.7,0.55")
    ap.add_argument("--train-dir", action="append", default=None)
    ap.add_argument("--val-dir", default=str(DEFAULT_SHARED / "Set5" / "HR"))
    ap.add_argument("--init-from", default=None)
    ap.add_argument("--out", required=True, help="run folder (checkpoints, log)")
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop (resumable) after this long")
    ap.add_argument("--stop-at", type=int, default=0, help="stop (resumable) at this step")
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all CPUs)")
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 (slower on AMX CPUs)")
    ns = ap.parse_args(argv)
    train_dirs = tuple(ns.train_dir or [str(DEFAULT_SHARED / "T91"), str(DEFAULT_SHARED / "BSD100" / "HR")])
    args = TrainArgs(
        scale=ns.scale, blocks=ns.blocks, filters=ns.filters, res_scale=ns.res_scale, steps=ns.steps,
        batch=ns.batch, patch=ns.patch, lr=ns.lr, warmup=ns.warmup, l2_from=ns.l2_from, ema=ns.ema,
        seed=ns.seed, zooms=tuple(float(z) for z in ns.zooms.split(",")), train_dirs=train_dirs,
        val_dir=ns.val_dir, init_from=ns.init_from,
    )
    return args, ns


def learning_rate(args: TrainArgs, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def to_input(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 BGR NHWC -> normalised NCHW float ((x - mean) / 255), channels-last in memory."""
    x = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float()
    return ((x - mean_tensor()) / 255.0).contiguous(memory_format=torch.channels_last)


def psnr_y(out_bgr: np.ndarray, hr_bgr: np.ndarray, border: int) -> float:
    """Y-channel PSNR with `border` pixels cropped, by the `srwatch eval` protocol."""
    y_out = shave(rgb_to_y(out_bgr[..., ::-1]), border)
    return psnr(y_out, shave(rgb_to_y(hr_bgr[..., ::-1]), border))


@torch.no_grad()
def run_uint8(model: EDSR, lr_bgr: np.ndarray) -> np.ndarray:
    """Model output for one uint8 BGR image, rounded to uint8 as the exported file would be."""
    x = to_input(lr_bgr[None])
    y = model(x.contiguous()) * 255.0 + mean_tensor()
    y = y.round().clamp(0, 255).to(torch.uint8)
    return y[0].permute(1, 2, 0).numpy()


def validate(model: EDSR, val_pairs: Sequence, scale: int) -> float:
    """Mean Set5 Y-PSNR (border = scale) of the model in float32."""
    model.eval()
    scores = [psnr_y(run_uint8(model, p.lr), p.hr, scale) for p in val_pairs]
    model.train()
    return float(np.mean(scores))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a kill during the save leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def init_body_from(model: EDSR, checkpoint: str) -> None:
    """Copy every weight except the scale-specific tail from another run (x3 -> x2/x4)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = state.get("ema") or state["model"]
    own = model.state_dict()
    copied = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape and not k.startswith("tail")}
    own.update(copied)
    model.load_state_dict(own)
    log(f"initialised {len(copied)} tensors from {checkpoint}")


def log(msg: str) -> None:
    """Progress line on stderr with a timestamp."""
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def train(args: TrainArgs, ns: argparse.Namespace) -> dict:
    """Run (or resume) training until args.steps or --max-minutes; return the last state."""
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    torch.manual_seed(args.seed)
    spec = EDSRSpec(scale=args.scale, blocks=args.blocks, filters=args.filters, res_scale=args.res_scale)
    model = EDSR(spec).to(memory_format=torch.channels_last)
    last = out / "last.pt"
    state: Optional[dict] = None
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["args"] != args.__dict__:
            raise SystemExit(f"{last} was made with other arguments; use another --out")
    elif args.init_from:
        init_body_from(model, args.init_from)
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))

    t0 = time.time()
    paths = list_images(Path(d) for d in args.train_dirs)
    pairs = build_pairs(paths, args.scale, args.patch, args.zooms)
    val_pairs = [make_pair(load_rgb(p), args.scale) for p in list_images([Path(args.val_dir)])]
    sampler = PatchSampler(pairs, args.scale, args.patch, seed=args.seed)
    log(f"{len(paths)} images -> {len(pairs)} training pairs, {len(val_pairs)} validation images "
        f"({time.time() - t0:.1f} s); {sum(p.numel() for p in model.parameters())} parameters")

    step, best, history = 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sampler.restore(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, best, history = state["step"], state["best"], state["history"]
        log(f"resumed at step {step} (best {best:.3f} dB)")

    started = time.time()
    use_bf16 = not ns.no_bf16
    window_loss, window_t = 0.0, time.time()
    while step < args.steps:
        lr_u8, hr_u8 = sampler.batch(args.batch)
        x, y = to_input(lr_u8), to_input(hr_u8)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(x)
        pred = pred.float()
        loss = F.l1_loss(pred, y) if step < args.l2_from * args.steps else F.mse_loss(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        window_loss += float(loss.detach())

        if step % 100 == 0:
            rate = 100 / (time.time() - window_t)
            log(f"step {step}/{args.steps} loss {window_loss / 100:.5f} lr {learning_rate(args, step):.2e} {rate:.1f} steps/s")
            window_loss, window_t = 0.0, time.time()
        timed_out = bool(ns.max_minutes and (time.time() - started) > ns.max_minutes * 60)
        timed_out = timed_out or bool(ns.stop_at and step >= ns.stop_at)
        if step % ns.val_every == 0 or step == args.steps:
            score = validate(ema, val_pairs, args.scale)
            history.append((step, score))
            if score > best:
                best = score
                save_checkpoint(out / "best.pt", {"spec": spec.to_dict(), "model": ema.state_dict(), "step": step, "psnr": score})
            log(f"step {step}: Set5 Y-PSNR {score:.3f} dB (best {best:.3f})")
        if step % ns.ckpt_every == 0 or step == args.steps or timed_out:
            state = {
                "args": args.__dict__, "spec": spec.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
                "opt": opt.state_dict(), "sampler": sampler.state(), "torch_rng": torch.get_rng_state(),
                "step": step, "best": best, "history": history,
            }
            save_checkpoint(last, state)
        if timed_out:
            log(f"stopped at step {step}; run again to resume")
            break
    (out / "history.json").write_text(json.dumps({"best": best, "history": history}, indent=1))
    return {"step": step, "best": best}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for `python -m srwatch.train.train`."""
    args, ns = parse_args(argv)
    result = train(args, ns)
    log(f"done: step {result['step']}, best Set5 Y-PSNR {result['best']:.3f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
