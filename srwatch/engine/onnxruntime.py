"""ONNX Runtime engine (optional extra: ``pip install srwatch[onnxruntime]``), for .onnx files.

TensorFlow ``.pb`` files are refused with a clear message: onnxruntime cannot read them, and
converting needs TensorFlow (tf2onnx), which is not a dependency.

``model.precision: f16`` converts the graph's weights and arithmetic to float16 when the model
is loaded (onnxconverter-common; inputs and outputs stay float32, so the engine's pre- and
post-processing do not change). It is meant for ``model.device: cuda``, where half-precision
convolutions run on the GPU's tensor cores; on a CPU it is no faster (the default model,
500x500, 2 threads: 0.71 s against 0.70 s in f32; benchmarks/bench_precision.py).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import numpy as np

from ..config import ModelConfig, TileConfig, resolve_precision
from ..errors import ModelLoadError
from .base import Engine, require_precision, widest_layer_cv2
from .models import ModelInfo

log = logging.getLogger(__name__)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(
            "model.engine: onnxruntime needs ONNX Runtime: pip install srwatch[onnxruntime] "
            "(onnxruntime-gpu for model.device: cuda)"
        ) from None
    return onnxruntime


#: Options for onnxruntime's CUDA execution provider. Empty: onnxruntime's defaults, among them
#: an exhaustive cuDNN algorithm search on the first run of every input shape.
#: benchmarks/bench_gpu.py times that against "HEURISTIC" on inputs of many sizes (a hot
#: folder's photos), where each new size pays the search; not measured yet (no GPU here).
CUDA_PROVIDER_OPTIONS: dict[str, str] = {}


def providers_for(ort: Any, device: str) -> list[Any]:
    """Execution providers for model.device; ModelLoadError when not installed."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError(
            f"model.device: {device} needs onnxruntime's CUDAExecutionProvider: "
            "pip install onnxruntime-gpu (instead of onnxruntime), or use model.device: cpu"
        )
    return [("CUDAExecutionProvider", dict(CUDA_PROVIDER_OPTIONS)), "CPUExecutionProvider"]


def _float16_graph(info: ModelInfo) -> bytes:
    """The model with float16 weights and arithmetic, float32 inputs and outputs, serialised."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise ModelLoadError(
            "model.precision: f16 needs onnx and onnxconverter-common: pip install srwatch[onnxruntime]"
        ) from None
    try:
        model = onnx.load(str(info.path))
        with warnings.catch_warnings():
            # One warning per weight below float16's range, raised to its smallest normal value:
            # dozens for a trained model, and harmless.
            warnings.simplefilter("ignore", UserWarning)
            # keep_io_types: Cast nodes at the edges, so the engine feeds and reads float32 as with f32.
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
        return converted.SerializeToString()
    except Exception as exc:  # onnx's DecodeError, the converter's ValueError on odd graphs
        raise ModelLoadError(f"cannot convert {info.path.name} to float16 (model.precision: f16): {exc}") from None


def _input_is_nhwc(shape: list[Any]) -> bool:
    """True for an NHWC input shape (channels, 1 or 3, last and fixed)."""
    return len(shape) == 4 and shape[1] not in (1, 3) and shape[3] in (1, 3)


class OnnxRuntimeEngine(Engine):
    """onnxruntime.InferenceSession with intra-op threads = the worker's threads."""

    name = "onnxruntime"

    def __init__(
        self, info: ModelInfo, tile_cfg: TileConfig, threads: int, device: str = "cpu", precision: str = "f32"
    ) -> None:
        super().__init__(info, tile_cfg, threads)
        if info.format != "onnx":
            raise ModelLoadError(
                f"model.engine: onnxruntime cannot read TensorFlow {info.path.name}; convert it to ONNX "
                "(e.g. python -m tf2onnx.convert --graphdef ...) or use model.engine: opencv or openvino"
            )
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena keeps every block it ever grew to and fragments across input shapes
        # (measured: RSS 531 -> 714 MB over three tiles of a 32x256 EDSR); plain malloc returns
        # the memory, at no measurable speed cost here.
        options.enable_cpu_mem_arena = False
        providers = providers_for(ort, device)
        graph = _float16_graph(info) if precision == "f16" else str(info.path)
        try:
            self.session = ort.InferenceSession(graph, options, providers=providers)
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph exceptions
            raise ModelLoadError(f"onnxruntime cannot load {info.path.name}: {exc}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.nhwc = _input_is_nhwc(list(model_input.shape))
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Run on an NCHW blob; returns NCHW float32."""
        feed = np.ascontiguousarray(blob.transpose(0, 2, 3, 1)) if self.nhwc else blob
        (out,) = self.session.run([self.output_name], {self.input_name: feed})
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if self.nhwc else out

    def widest_layer(self) -> Optional[float]:
        """From the graph: ONNX shape inference with a 16x16 input (OpenCV's reading if onnx is absent)."""
        widest = widest_layer_onnx(self.info, nhwc=self.nhwc)
        return widest if widest is not None else widest_layer_cv2(self.info)


def widest_layer_onnx(info: ModelInfo, nhwc: bool = False) -> Optional[float]:
    """Largest tensor per input pixel after ONNX shape inference on a 16x16 input, or None."""
    try:
        import onnx
    except ImportError:  # onnx is only a test/train extra
        return None

    side = 16
    channels = 1 if info.luma_only else 3
    try:
        model = onnx.load(str(info.path))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, [1, side, side, channels] if nhwc else [1, channels, side, side]):
            dim.ClearField("dim_param")
            dim.dim_value = value
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # malformed graphs, ops shape inference does not know
        log.debug("shape inference failed for %s: %s", info.path.name, exc)
        return None
    widest = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if shape and all(d > 0 for d in shape):
            widest = max(widest, int(np.prod(shape)))
    return widest / float(side * side) if widest else None


def load_onnxruntime(info: ModelInfo, model_cfg: ModelConfig, tile_cfg: TileConfig, threads: int) -> OnnxRuntimeEngine:
    """Build the onnxruntime engine (load_engine runs the checks)."""
    require_precision(model_cfg, "onnxruntime")
    return OnnxRuntimeEngine(
        info, tile_cfg, threads, device=model_cfg.device, precision=resolve_precision(model_cfg)
    )
