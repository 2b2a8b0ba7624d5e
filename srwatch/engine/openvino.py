"""OpenVINO engine (optional extra: ``pip install srwatch[openvino]``).

openvino.Core reads the same files as the opencv engine: ``.pb`` through its TensorFlow frontend
(the graph keeps TensorFlow's NHWC input; the upstream graphs end in an ``NCHW_output``
transpose) and ``.onnx`` (NCHW). The model is reshaped to each input size and compiled; compiled
models are kept per input shape in a small LRU cache, since tiles mostly share one shape.

Precision (``model.precision``): auto means bf16 here, about 5x faster than f32 on CPUs with
AMX/AVX512-BF16 (up to 3.5x on LapSRN_x8) and within 0.012 dB of f32 on Set5 for srwatch's
models (46-58 dB against f32 on 8-bit output of the upstream models); OpenVINO itself runs f32
on CPUs without bf16. f32 is there for bit-for-bit reproducibility. int8 reads the post-training quantized IR ``<stem>-int8.xml``
beside the model file (``python -m srwatch.quantize``; models/README.md), its float parts in bf16.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import tiling
from ..config import ModelConfig, TileConfig, resolve_precision
from ..errors import ModelLoadError
from .base import Engine, require_precision
from .models import ModelInfo

log = logging.getLogger(__name__)

#: Compiled models kept per input shape. All tiles of an image share one shape, so two cover
#: "the tile shape plus one odd small image". Kept small because each compiled model holds its
#: own repacked weights and its activation buffers (measured for the 32x256 EDSR stand-in:
#: about 230 MB of weights per compiled model); recompiling costs about 0.5 s there.
COMPILED_CACHE_SIZE = 2
#: Colour graphs get inputs padded to a multiple of this (see OpenVINOEngine.forward). Measured
#: with the default model, bf16, 2 threads: 358x358 1.62 input MP/s against 2.70 at 368x368,
#: 691x691 1.20 against 2.49 at 704x704; the EDSR_x3-shaped stand-in 3.9 s at 368x368 and 8.0 s
#: at 358x358. FSRCNN (luma) is not affected, so it is not padded (the extra pixels cost it 6%).
ALIGN = 16
#: ... from this many input pixels: below 256x256 no size was measured slower (64-208 px
#: sides), and a small image keeps the output every other engine gives it (bit for bit).
ALIGN_FROM_PIXELS = 256 * 256


#: oneDNN keeps compiled primitives per input shape (default capacity 1024), and the CPU
#: plugin its own per-shape cache: with every photo a different size, a worker grew by about
#: 1.2 MB per distinct size, without bound (found by the 30-minute soak: +400 MB). These
#: capacities keep it flat and cost nothing measurable (same-shape and mixed-shape timings
#: unchanged); both are needed.
ONEDNN_PRIMITIVE_CACHE = "64"  # primitives; read by oneDNN when it loads, so set before import
CPU_RUNTIME_CACHE = 16  # shapes


def _import_openvino() -> Any:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE)
    try:
        import openvino
    except ImportError:
        raise ModelLoadError(
            "model.engine: openvino needs the OpenVINO runtime: pip install srwatch[openvino]"
        ) from None
    return openvino


def _device_name(device: str) -> str:
    """OpenVINO device for model.device."""
    if device == "cpu":
        return "CPU"
    if device == "gpu":
        return "GPU"
    raise ModelLoadError("model.device: cuda is not an OpenVINO device; use cpu or gpu (Intel GPU) with openvino")


def _input_is_nhwc(model: Any, fmt: str) -> bool:
    """True when the model's 4-D input is NHWC (TensorFlow graphs); decided from its shape if static."""
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape.rank.get_length() == 4:
        c1, c3 = shape[1], shape[3]
        if c1.is_static and c1.get_length() in (1, 3):
            return False
        if c3.is_static and c3.get_length() in (1, 3):
            return True
    return fmt == "pb"


class OpenVINOEngine(Engine):
    """openvino.Core on CPU (or an Intel GPU), compiled per input shape; f32 unless model.precision says bf16."""

    name = "openvino"
    switches_threads = True

    def __init__(
        self, info: ModelInfo, tile_cfg: TileConfig, threads: int, device: str = "cpu", precision: str = "f32"
    ) -> None:
        super().__init__(info, tile_cfg, threads)
        ov = _import_openvino()
        self.device = _device_name(device)
        self.core = ov.Core()
        self.model_path = int8_model_path(info.path) if precision == "int8" else info.path
        if not self.model_path.is_file():
            raise ModelLoadError(
                f"model.precision: int8 needs {self.model_path.name} beside {info.path.name}, and there is "
                f"none in {info.path.parent} (python -m srwatch.quantize makes it; or use f32 or bf16)"
            )
        try:
            self.model = self.core.read_model(str(self.model_path))
        except Exception as exc:  # openvino raises RuntimeError/OVError with long messages
            raise ModelLoadError(f"OpenVINO cannot read {self.model_path.name}: {_first_line(exc)}") from None
        if self.device not in self.core.available_devices:
            raise ModelLoadError(f"model.device: OpenVINO has no {self.device} device here ({self.core.available_devices})")
        self.nhwc = _input_is_nhwc(self.model, info.format)
        self.config = {
            "INFERENCE_NUM_THREADS": self.threads,
            # f32 unless model.precision says bf16. int8: the IR's float parts (first and last conv,
            # skips) in bf16: 1.2-1.6x faster than in f32 and as exact (Set5 within 0.01 dB);
            # OpenVINO keeps f32 on CPUs without bf16.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "int8" else precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time per worker
        }
        if self.device == "CPU":
            self.config["CPU_RUNTIME_CACHE_CAPACITY"] = CPU_RUNTIME_CACHE
            # OpenVINO pins its inference threads to cores, counting from the first, in every
            # process alike: two 1-thread workers then share one core while the other idles
            # (measured: 128 ms per 256x256 tile each at 50% CPU, against 61 ms at 100% unpinned).
            # srwatch runs several processes, so the kernel places the threads; one process with
            # two threads is as fast either way (32-33 ms).
            self.config["ENABLE_CPU_PINNING"] = False
        # Keyed by thread count too: a worker may also hold a model compiled for fewer threads,
        # used while other workers are busy (prepare_crowded).
        self._compiled: "OrderedDict[tuple[int, tuple[int, ...]], tuple[Any, Any]]" = OrderedDict()
        self._dynamic: dict[int, Any] = {}  # threads -> the dynamic-size compiled model; False if the graph refuses

    def input_shape(self, blob: np.ndarray) -> tuple[int, ...]:
        """The model's input shape for an NCHW blob (NHWC graphs get the transposed shape)."""
        n, c, h, w = blob.shape
        return (n, h, w, c) if self.nhwc else (n, c, h, w)

    def compiled_for(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """(compiled model, output port or None) for an input shape.

        One compile with dynamic height and width serves every input size: compiling per
        shape cost 0.1-0.2 s per distinct image size (mixed photo sizes recompiled for every
        file; measured 3x slower end to end on the default model), while the dynamic model
        runs within a few percent of a static one. Graphs that cannot take dynamic
        dimensions fall back to one compile per shape (small LRU cache).
        """
        threads = self.active_threads
        if threads not in self._dynamic:
            self._dynamic[threads] = self._compile_dynamic(threads)
        if self._dynamic[threads] is not False:
            return self._dynamic[threads], None
        key = (threads, shape)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        self.model.reshape({self.model.inputs[0]: list(shape)})
        compiled = self.core.compile_model(self.model, self.device, self._config_for(threads))
        entry = (compiled, self._pick_output(compiled, shape))
        self._compiled[key] = entry
        if len(self._compiled) > COMPILED_CACHE_SIZE:
            self._compiled.popitem(last=False)
        return entry

    def _config_for(self, threads: int) -> dict[str, Any]:
        return {**self.config, "INFERENCE_NUM_THREADS": threads}

    def prepare_crowded(self, threads: int, others_busy: Callable[[], bool]) -> None:
        """Also compile for `threads` (fewer) now, not on the first file that finds the others busy.

        If that compile fails, the engine stays on its fixed threads (and the error is raised):
        no file ever asks for the missing model.
        """
        super().prepare_crowded(threads, others_busy)
        if self.crowded_threads is not None and self.crowded_threads not in self._dynamic:
            if self._dynamic.get(self.threads) is not False:  # else compiled per input size, as it comes
                try:
                    self._dynamic[self.crowded_threads] = self._compile_dynamic(self.crowded_threads)
                except BaseException:
                    self.crowded_threads = None
                    raise

    def _compile_dynamic(self, threads: int) -> Any:
        """The model compiled with dynamic height and width, or False if this graph cannot be."""
        ov = _import_openvino()
        channels = 1 if self.info.luma_only else 3
        dims = [1, -1, -1, channels] if self.nhwc else [1, channels, -1, -1]
        try:
            self.model.reshape({self.model.inputs[0]: ov.PartialShape(dims)})
            return self.core.compile_model(self.model, self.device, self._config_for(threads))
        except Exception as exc:  # noqa: BLE001 - a graph with fixed-size ops: compile per shape instead
            log.info("%s cannot run with dynamic input sizes (%s); compiling per input size",
                     self.info.path.name, _first_line(exc))
            return False

    def _pick_output(self, compiled: Any, shape: tuple[int, ...]) -> Any:
        """The output at ``scale`` x the input size (LapSRN graphs also output the 2x/4x levels)."""
        h, w = (shape[1], shape[2]) if self.nhwc else (shape[2], shape[3])
        wanted = (h * self.scale, w * self.scale)
        matching = [out for out in compiled.outputs if _spatial_matches(tuple(out.get_shape()), wanted)]
        if not matching:
            shapes = [tuple(out.get_shape()) for out in compiled.outputs]
            raise RuntimeError(f"no output is x{self.scale} of a {w}x{h} input (outputs {shapes})")
        # Upstream graphs name their final output NCHW_output; prefer it over a same-size level.
        named = [out for out in matching if any(n.split(":")[0] == "NCHW_output" for n in out.get_names())]
        return (named or matching)[0]

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Run on an NCHW blob; returns NCHW float32.

        A colour graph on an input of ALIGN_FROM_PIXELS or more runs on the blob reflect-padded
        at the bottom and right to a multiple of ALIGN, and its output is cropped back:
        OpenVINO's bf16 convolutions of the EDSR family run up to 2x slower on other sizes
        (benchmarks/README.md, "Aligned sizes"). Only pixels within the receptive field of
        those two edges change, as they would with any padding.
        """
        height, width = blob.shape[2:]
        align = 1 if self.info.luma_only or height * width < ALIGN_FROM_PIXELS else ALIGN
        pad_h, pad_w = -height % align, -width % align
        if not pad_h and not pad_w:
            return self._forward(blob)
        out = self._forward(np.pad(blob, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect"))
        return out[:, :, : height * self.scale, : width * self.scale]  # a view: the callers slice it again

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        compiled, output = self.compiled_for(self.input_shape(blob))
        feed = np.ascontiguousarray(blob.transpose(0, 2, 3, 1)) if self.nhwc else blob
        height, width = blob.shape[2] * self.scale, blob.shape[3] * self.scale
        results = compiled({0: feed})
        if output is not None:
            return _to_nchw(np.asarray(results[output]), height, width)
        return _to_nchw(self._final_output(compiled, results, height, width), height, width)

    def _final_output(self, compiled: Any, results: Any, height: int, width: int) -> np.ndarray:
        """The output at ``scale`` x the input size (LapSRN graphs also output the 2x/4x levels)."""
        matching = [out for out in compiled.outputs if _spatial_matches(tuple(results[out].shape), (height, width))]
        if not matching:
            shapes = [tuple(results[out].shape) for out in compiled.outputs]
            raise RuntimeError(f"no output is x{self.scale} of the input (outputs {shapes})")
        # Upstream graphs name their final output NCHW_output; prefer it over a same-size level.
        named = [out for out in matching if any(n.split(":")[0] == "NCHW_output" for n in out.get_names())]
        return np.asarray(results[(named or matching)[0]])

    def fast_tile_size(self) -> Optional[int]:
        """Tiles above tiling.cache_tile_size run slower per pixel here (measured: up to 1.5x)."""
        return tiling.cache_tile_size(self.measured_widest, self.tile_cfg.overlap)

    def widest_layer(self) -> Optional[float]:
        """From the graph: every op's output shape after a reshape to 16x16."""
        side = 16
        channels = 1 if self.info.luma_only else 3
        model = self.model  # compiled_for() reshapes it again before it compiles
        shape = [1, side, side, channels] if self.nhwc else [1, channels, side, side]
        try:
            model.reshape({model.inputs[0]: shape})
        except Exception as exc:
            log.debug("cannot reshape %s for measuring: %s", self.info.path.name, exc)
            return None
        widest = 0
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Constant", "Parameter"):
                continue
            for i in range(op.get_output_size()):
                pshape = op.get_output_partial_shape(i)
                if pshape.is_static:
                    widest = max(widest, int(np.prod([d.get_length() for d in pshape])))
        return widest / float(side * side) if widest else None


def int8_model_path(path: Path) -> Path:
    """The quantized IR shipped beside a model file: models/EDSR-srwatch_x3.onnx -> .../EDSR-srwatch_x3-int8.xml."""
    return path.with_name(f"{path.stem}-int8.xml")


def _spatial_matches(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """True when a 4-D NCHW or NHWC shape has spatial size ``size`` (height, width)."""
    return len(shape) == 4 and (shape[2:4] == size or shape[1:3] == size)


def _to_nchw(out: np.ndarray, height: int, width: int) -> np.ndarray:
    """An NCHW or NHWC 4-D output of known spatial size as NCHW."""
    if out.shape[2:] == (height, width):
        return out
    if out.shape[1:3] == (height, width):
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    raise RuntimeError(f"unexpected output shape {out.shape} for {width}x{height}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_openvino(info: ModelInfo, model_cfg: ModelConfig, tile_cfg: TileConfig, threads: int) -> OpenVINOEngine:
    """Build the openvino engine (load_engine runs the checks)."""
    require_precision(model_cfg, "openvino")
    return OpenVINOEngine(info, tile_cfg, threads, device=model_cfg.device, precision=resolve_precision(model_cfg))
