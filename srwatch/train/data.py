"""Training data: HR images, their antialiased-bicubic LR pairs, and random aligned patches.

The degradation is the one the evaluation uses (PIL bicubic with antialiasing), so the
network learns exactly the inverse it is measured on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}


@dataclass(frozen=True)
class Pair:
    """One HR image (cropped to a multiple of the scale) and its LR version, BGR uint8."""

    lr: np.ndarray
    hr: np.ndarray


def list_images(folders: Iterable[Path]) -> list[Path]:
    """Image files directly in, or one level below, each folder (T91/*.png, BSD100/HR/*.png)."""
    found: list[Path] = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
    return found


def load_rgb(path: Path) -> Image.Image:
    """An image as 8-bit RGB (PIL)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def make_pair(hr_rgb: Image.Image, scale: int) -> Pair:
    """Crop HR to a multiple of `scale` and make the LR by PIL bicubic (antialiased)."""
    w, h = hr_rgb.size
    w, h = w - w % scale, h - h % scale
    hr_rgb = hr_rgb.crop((0, 0, w, h))
    lr_rgb = hr_rgb.resize((w // scale, h // scale), Image.BICUBIC)
    # BGR, the channel order cv2.dnn_superres feeds an EDSR graph.
    hr = np.ascontiguousarray(np.asarray(hr_rgb)[:, :, ::-1])
    lr = np.ascontiguousarray(np.asarray(lr_rgb)[:, :, ::-1])
    return Pair(lr=lr, hr=hr)


def build_pairs(
    paths: Sequence[Path], scale: int, patch: int, zooms: Sequence[float] = (1.0,)
) -> list[Pair]:
    """LR/HR pairs for every image at every zoom (HR shrunk first: more, varied texture).

    Pairs whose LR side is shorter than the patch are dropped.
    """
    pairs: list[Pair] = []
    for path in paths:
        hr = load_rgb(path)
        for zoom in zooms:
            img = hr
            if zoom != 1.0:
                size = (max(1, round(hr.width * zoom)), max(1, round(hr.height * zoom)))
                img = hr.resize(size, Image.BICUBIC)
            pair = make_pair(img, scale)
            if min(pair.lr.shape[:2]) >= patch:
                pairs.append(pair)
    return pairs


class PatchSampler:
    """Random aligned LR/HR patches with the 8 flips/rotations, from a seeded generator."""

    def __init__(self, pairs: Sequence[Pair], scale: int, patch: int, seed: int) -> None:
        if not pairs:
            raise ValueError("no training images large enough for the patch size")
        self.pairs = list(pairs)
        self.scale = scale
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        # Sample images in proportion to their area so big images are not under-used.
        areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(lr, hr) uint8 arrays shaped (N, p, p, 3) and (N, p*s, p*s, 3)."""
        p, s = self.patch, self.scale
        lrs = np.empty((size, p, p, 3), np.uint8)
        hrs = np.empty((size, p * s, p * s, 3), np.uint8)
        picks = self.rng.choice(len(self.pairs), size=size, p=self.weights)
        for i, k in enumerate(picks):
            pair = self.pairs[k]
            h, w = pair.lr.shape[:2]
            y = int(self.rng.integers(0, h - p + 1))
            x = int(self.rng.integers(0, w - p + 1))
            lr = pair.lr[y : y + p, x : x + p]
            hr = pair.hr[y * s : (y + p) * s, x * s : (x + p) * s]
            op = int(self.rng.integers(0, 8))
            lrs[i] = _dihedral(lr, op)
            hrs[i] = _dihedral(hr, op)
        return lrs, hrs

    def state(self) -> dict:
        """Generator state, saved in checkpoints so a resumed run draws the same patches."""
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        """Restore the generator state from a checkpoint."""
        self.rng.bit_generator.state = state


def _dihedral(img: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square patch."""
    if op & 4:
        img = img.transpose(1, 0, 2)
    if op & 2:
        img = img[::-1]
    if op & 1:
        img = img[:, ::-1]
    return img
