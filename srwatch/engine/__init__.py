"""Super-resolution engines: load a model file once per worker, upscale images with it.

    engine = load_engine(cfg.model, cfg.tile, threads)   # raises ModelLoadError
    out = engine.upscale(bgr)                             # uint8/uint16, scale x the size

``model.engine`` picks the runtime: ``auto`` (default: openvino when installed, else opencv),
``opencv`` (cv2.dnn_superres / cv2.dnn), ``openvino`` or ``onnxruntime`` (optional extras,
imported only when chosen).
"""
from __future__ import annotations

import logging
from typing import Callable

from ..config import ModelConfig, TileConfig, resolve_engine
from ..errors import ModelLoadError
from .base import Engine
from .models import ALGORITHMS, ModelInfo, resolve_model

log = logging.getLogger(__name__)

__all__ = ["ALGORITHMS", "Engine", "ModelInfo", "load_engine", "resolve_model"]

Loader = Callable[[ModelInfo, ModelConfig, TileConfig, int], Engine]


def _loader(name: str) -> Loader:
    """The engine module's loader; each module imports its runtime only when used."""
    if name == "opencv":
        from .opencv import load_opencv

        return load_opencv
    if name == "openvino":
        from .openvino import load_openvino

        return load_openvino
    if name == "onnxruntime":
        from .onnxruntime import load_onnxruntime

        return load_onnxruntime
    raise ModelLoadError(f"model.engine: unknown engine {name!r} (opencv, openvino, onnxruntime)")


def load_engine(model_cfg: ModelConfig, tile_cfg: TileConfig, threads: int) -> Engine:
    """Load the configured model with the configured engine, test it, and resolve the tile size.

    Raises ModelLoadError when the file cannot be resolved or loaded, or a test forward does not
    upscale by the model's scale.
    """
    info = resolve_model(model_cfg)
    engine = _loader(resolve_engine(model_cfg))(info, model_cfg, tile_cfg, threads)
    engine.finish_load()
    log.info(
        "loaded %s (%s x%d, %s) with %s, %d thread(s), tile %s",
        info.path.name, info.algorithm, info.scale, info.format, engine.name, engine.threads,
        engine.tile_size or "off",
    )
    return engine
