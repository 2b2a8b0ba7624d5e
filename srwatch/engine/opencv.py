"""The default engine: OpenCV's dnn module.

``.pb`` files go through cv2.dnn_superres: for 8-bit BGR and grayscale images we call
``DnnSuperResImpl.upsample`` itself, so the result is exactly what OpenCV's own super-resolution
gives. 16-bit images (which dnn_superres would cut to 8 bits) and ``.onnx`` files run through a
plain ``cv2.dnn.Net`` with the stages in engine/base.py.
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
import numpy as np

from ..config import ModelConfig, TileConfig
from .. import tiling
from ..errors import ModelError, ModelLoadError
from .base import DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL, Engine, require_precision, widest_layer_cv2
from .models import ModelInfo

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    """True when this OpenCV build has the CUDA dnn backend and sees a CUDA device."""
    try:
        return cv2.cuda.getCudaEnabledDeviceCount() > 0
    except (cv2.error, AttributeError):
        return False


def backend_target(device: str) -> tuple[int, int]:
    """(DNN backend, DNN target) for model.device; ModelLoadError when not available here."""
    if device == "cpu":
        return cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU
    if device == "cuda":
        if not cuda_available():
            raise ModelLoadError(
                "model.device: cuda, but this OpenCV build has no CUDA support or sees no CUDA device "
                "(build OpenCV with CUDA and cuDNN, or use model.device: cpu)"
            )
        return cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA
    # 'gpu': OpenCL, the vendor-neutral GPU path of OpenCV.
    if not cv2.ocl.haveOpenCL():
        raise ModelLoadError("model.device: gpu, but OpenCV finds no OpenCL device (use model.device: cpu)")
    return cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_OPENCL


class OpenCVEngine(Engine):
    """cv2.dnn_superres for .pb, cv2.dnn for .onnx (and for 16-bit input of .pb models)."""

    name = "opencv"

    def __init__(self, info: ModelInfo, tile_cfg: TileConfig, threads: int, device: str = "cpu") -> None:
        super().__init__(info, tile_cfg, threads)
        # Per process: the worker owns its process, and OpenCV's pool is global.
        cv2.setNumThreads(self.threads)
        self.backend, self.target = backend_target(device)
        self.superres: Optional[cv2.dnn_superres.DnnSuperResImpl] = None
        self._net: Optional[cv2.dnn.Net] = None
        try:
            if info.format == "pb":
                # Creating a DnnSuperResImpl also registers dnn_superres' own DepthToSpace layer,
                # which the upstream ESPCN graphs need even when read by plain cv2.dnn. The
                # registry is per process and that layer guesses the block size from the channel
                # count (wrong for a 64-channel x8 luma DepthToSpace), so .onnx files, which
                # OpenCV reads with its standard layer, never create one.
                self.superres = cv2.dnn_superres.DnnSuperResImpl_create()
                self.superres.readModel(str(info.path))
                self.superres.setModel(info.algorithm, info.scale)
                if device != "cpu":  # the CPU is the default; setting it makes OpenCV 5 warn
                    self.superres.setPreferableBackend(self.backend)
                    self.superres.setPreferableTarget(self.target)
            else:
                self._net = self._read_net()
        except cv2.error as exc:
            raise ModelLoadError(f"OpenCV cannot load {info.path.name}: {_short(exc)}") from None

    def _read_net(self) -> cv2.dnn.Net:
        """A plain cv2.dnn.Net of the model file, on the configured backend/target."""
        net = cv2.dnn.readNet(str(self.info.path))
        if (self.backend, self.target) != (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU):
            # Only off the CPU: setting the default makes OpenCV 5's new engine warn on every load.
            net.setPreferableBackend(self.backend)
            net.setPreferableTarget(self.target)
        return net

    @property
    def net(self) -> cv2.dnn.Net:
        """The plain Net; for .pb models read on first use (only 16-bit input needs it)."""
        if self._net is None:
            self._net = self._read_net()
        return self._net

    def uses_superres(self, img: np.ndarray) -> bool:
        """True when dnn_superres' own upsample takes this input (8-bit, .pb, BGR or a luma model)."""
        return self.superres is not None and img.dtype == np.uint8 and (img.ndim == 3 or self.info.luma_only)

    def upscale_whole(self, img: np.ndarray) -> np.ndarray:
        """dnn_superres' own upsample for 8-bit .pb input; the float stages otherwise."""
        if self.uses_superres(img):
            return self.superres.upsample(img)
        return super().upscale_whole(img)

    def upscale_tile(self, window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        """dnn_superres' own upsample of the window (its core copied into ``region``), or the stages.

        dnn_superres runs the .pb in its own net, faster than a plain cv2.dnn.Net of the same
        file here; reading that second net would also double the model's memory.
        """
        if not self.uses_superres(window):
            super().upscale_tile(window, win, region)
            return
        out = self.superres.upsample(window)
        if out.shape[:2] != (window.shape[0] * self.scale, window.shape[1] * self.scale):
            raise ModelError(f"model output is {out.shape[1]}x{out.shape[0]} for a {window.shape[1]}x{window.shape[0]} window")
        region[...] = tiling.crop_core(out, win)

    @property
    def pipeline_bytes_per_output_pixel(self) -> float:
        """dnn_superres' figure when it runs the tiles (8-bit input of a .pb model)."""
        return DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL if self.superres is not None else super().pipeline_bytes_per_output_pixel

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """cv2.dnn forward of an NCHW float32 blob."""
        net = self.net
        net.setInput(blob)
        return net.forward()

    def widest_layer(self) -> Optional[float]:
        """From the graph, via OpenCV's classic dnn engine."""
        return widest_layer_cv2(self.info)


def _short(exc: cv2.error) -> str:
    """The informative last line of an OpenCV error message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


def load_opencv(info: ModelInfo, model_cfg: ModelConfig, tile_cfg: TileConfig, threads: int) -> OpenCVEngine:
    """Build the opencv engine (load_engine runs the checks)."""
    require_precision(model_cfg, "opencv")
    return OpenCVEngine(info, tile_cfg, threads, device=model_cfg.device)
