"""Export a trained EDSR to the files the daemon loads: a TensorFlow GraphDef and an ONNX file.

Both files work in the 0..255 domain with the DIV2K mean subtracted (what cv2.dnn_superres feeds
an ``edsr`` model): the network's 1/255 input scaling is folded into the head conv weights and
its x255 output scaling into the tail conv weights and bias.

* ``<stem>.pb``: a frozen GraphDef laid out like the upstream EDSR_x*.pb, so that
  ``cv2.dnn_superres`` loads it as ``edsr`` (see ../shared/FACTS.md). TensorFlow is not a
  dependency, so the protobuf is written by hand (a few message types, wire format only).
* ``<stem>.onnx``: built with ``onnx.helper``, NCHW, dynamic height and width, DepthToSpace DCR
  (the TensorFlow order the model is trained in), with ``srwatch.*`` metadata.

CLI: ``python -m srwatch.train.export CHECKPOINT OUT_DIR [--stem EDSR-srwatch_x3]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from srwatch.train.model import EDSR, EDSRSpec

ONNX_OPSET = 13
#: IR version 8 goes with opset 13; older readers reject newer IR versions.
ONNX_IR_VERSION = 8
#: GraphDef producer version, as in TensorFlow 1.x frozen graphs like the upstream EDSR_x*.pb.
GRAPHDEF_PRODUCER = 27

PB_INPUT = "IteratorGetNext"
#: dnn_superres looks for the final NHWC -> NCHW transpose under this name.
PB_OUTPUT = "NCHW_output"
ONNX_INPUT = "input"
ONNX_OUTPUT = "output"


# --- weights ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvWeights:
    """A 3x3 conv's weights in 0..255 units: ``weight`` OIHW float32, ``bias`` O float32."""

    name: str
    weight: np.ndarray
    bias: np.ndarray


def _conv_weights(name: str, conv: torch.nn.Conv2d, scale: float = 1.0, bias_scale: float = 1.0) -> ConvWeights:
    """A conv layer's weights as float32 numpy, weight and bias multiplied by the given factors."""
    weight = conv.weight.detach().to("cpu", torch.float64).numpy() * scale
    bias = conv.bias.detach().to("cpu", torch.float64).numpy() * bias_scale
    return ConvWeights(name, weight.astype(np.float32), bias.astype(np.float32))


def folded_convs(model: EDSR) -> tuple[ConvWeights, list[tuple[ConvWeights, ConvWeights]], ConvWeights, ConvWeights]:
    """(head, [(conv1, conv2) per block], body_end, tail), folded for 0..255 input and output.

    The head sees x/255: scaling its weights by 1/255 lets it see x (its bias is unchanged). The
    network's output is multiplied by 255: scaling the tail's weights and bias does that.
    """
    head = _conv_weights("head", model.head, scale=1.0 / 255.0)
    blocks = [
        (_conv_weights(f"block{i}/conv1", b.conv1), _conv_weights(f"block{i}/conv2", b.conv2))
        for i, b in enumerate(model.blocks)
    ]
    body_end = _conv_weights("body_end", model.body_end)
    tail = _conv_weights("tail", model.tail, scale=255.0, bias_scale=255.0)
    return head, blocks, body_end, tail


# --- ONNX -------------------------------------------------------------------------------------


def build_onnx(model: EDSR) -> onnx.ModelProto:
    """The EDSR as an ONNX model (NCHW, 0..255 minus the mean in and out)."""
    spec: EDSRSpec = model.spec
    head, blocks, body_end, tail = folded_convs(model)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def conv(x: str, w: ConvWeights) -> str:
        initializers.append(numpy_helper.from_array(w.weight, f"{w.name}/weight"))
        initializers.append(numpy_helper.from_array(w.bias, f"{w.name}/bias"))
        out = f"{w.name}/out"
        nodes.append(helper.make_node(
            "Conv", [x, f"{w.name}/weight", f"{w.name}/bias"], [out], name=w.name,
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ))
        return out

    def op(op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    if spec.res_scale != 1.0:
        initializers.append(numpy_helper.from_array(np.array(spec.res_scale, np.float32), "res_scale"))
    h = conv(ONNX_INPUT, head)
    y = h
    for i, (conv1, conv2) in enumerate(blocks):
        r = conv(op("Relu", [conv(y, conv1)], f"block{i}/relu"), conv2)
        if spec.res_scale != 1.0:
            r = op("Mul", [r, "res_scale"], f"block{i}/scaled")
        y = op("Add", [y, r], f"block{i}/add")
    y = op("Add", [conv(y, body_end), h], "body/add")
    op("DepthToSpace", [conv(y, tail)], ONNX_OUTPUT, blocksize=spec.scale, mode="DCR")

    graph = helper.make_graph(
        nodes, "edsr",
        inputs=[helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs=[helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, [1, 3, "out_height", "out_width"])],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION,
        producer_name="srwatch",
        doc_string="EDSR; input/output NCHW BGR minus the DIV2K mean, 0..255",
    )
    helper.set_model_props(onnx_model, {
        "srwatch.algorithm": "edsr",
        "srwatch.scale": str(spec.scale),
        "srwatch.spec": json.dumps(spec.to_dict(), sort_keys=True),
    })
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export_onnx(model: EDSR, path: Path | str) -> Path:
    """Write the EDSR as an ONNX file at ``path``; returns the path."""
    return _write_atomic(Path(path), build_onnx(model).SerializeToString())


# --- TensorFlow GraphDef, hand-encoded --------------------------------------------------------
# Field numbers from tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape,
# types,versions}.proto. Only what this graph needs.

DT_FLOAT = 1
DT_INT32 = 3


def _varint(n: int) -> bytes:
    """Base-128 varint; negative int64 values as their 64-bit two's complement (10 bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _shape_proto(dims: Sequence[int]) -> bytes:
    """TensorShapeProto: dim=2 {size=1}; -1 is an unknown size."""
    return b"".join(_field_bytes(2, _field_varint(1, d)) for d in dims)


def _tensor_proto(array: np.ndarray) -> bytes:
    """TensorProto: dtype=1, tensor_shape=2, tensor_content=4 (little-endian raw bytes)."""
    dtype = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.int32): DT_INT32}[array.dtype]
    content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return _field_varint(1, dtype) + _field_bytes(2, _shape_proto(array.shape)) + _field_bytes(4, content)


def _attr_type(dtype: int) -> bytes:
    return _field_varint(6, dtype)


def _attr_str(value: str) -> bytes:
    return _field_bytes(2, value.encode())


def _attr_int(value: int) -> bytes:
    return _field_varint(3, value)


def _attr_bool(value: bool) -> bytes:
    return _field_varint(5, int(value))


def _attr_ints(values: Sequence[int]) -> bytes:
    """AttrValue.list (=1) with ListValue.i (=3, packed)."""
    packed = b"".join(_varint(v) for v in values)
    return _field_bytes(1, _field_bytes(3, packed) if values else b"")


def _attr_shape(dims: Sequence[int]) -> bytes:
    return _field_bytes(7, _shape_proto(dims))


def _attr_tensor(array: np.ndarray) -> bytes:
    return _field_bytes(8, _tensor_proto(array))


def _node_def(name: str, op: str, inputs: Sequence[str], attrs: dict[str, bytes]) -> bytes:
    """NodeDef: name=1, op=2, input=3, attr=5 (map entries: key=1, value=2), keys sorted as TF does."""
    out = _field_bytes(1, name.encode()) + _field_bytes(2, op.encode())
    out += b"".join(_field_bytes(3, i.encode()) for i in inputs)
    for key in sorted(attrs):
        out += _field_bytes(5, _field_bytes(1, key.encode()) + _field_bytes(2, attrs[key]))
    return out


class _GraphDefBuilder:
    """Collects NodeDefs of an NHWC float graph and serialises them as a GraphDef."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []

    def add(self, name: str, op: str, inputs: Sequence[str] = (), **attrs: bytes) -> str:
        self.nodes.append(_node_def(name, op, inputs, attrs))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        dtype = DT_INT32 if array.dtype == np.int32 else DT_FLOAT
        return self.add(name, "Const", dtype=_attr_type(dtype), value=_attr_tensor(array))

    def conv(self, x: str, w: ConvWeights) -> str:
        """Conv2D (SAME, stride 1, HWIO filter) + BiasAdd."""
        filt = self.const(f"{w.name}/kernel", np.ascontiguousarray(w.weight.transpose(2, 3, 1, 0)))
        bias = self.const(f"{w.name}/bias", w.bias)
        nhwc, t = _attr_str("NHWC"), _attr_type(DT_FLOAT)
        y = self.add(
            f"{w.name}/Conv2D", "Conv2D", [x, filt], T=t, data_format=nhwc, padding=_attr_str("SAME"),
            strides=_attr_ints([1, 1, 1, 1]), dilations=_attr_ints([1, 1, 1, 1]),
            use_cudnn_on_gpu=_attr_bool(True),
        )
        return self.add(f"{w.name}/BiasAdd", "BiasAdd", [y, bias], T=t, data_format=nhwc)

    def serialise(self) -> bytes:
        """GraphDef: node=1 (repeated), versions=4 {producer=1}."""
        body = b"".join(_field_bytes(1, n) for n in self.nodes)
        return body + _field_bytes(4, _field_varint(1, GRAPHDEF_PRODUCER))


def build_graphdef(model: EDSR) -> bytes:
    """The EDSR as a serialised frozen GraphDef in dnn_superres' ``edsr`` layout."""
    spec: EDSRSpec = model.spec
    head, blocks, body_end, tail = folded_convs(model)
    g = _GraphDefBuilder()
    t = _attr_type(DT_FLOAT)

    x = g.add(PB_INPUT, "Placeholder", dtype=t, shape=_attr_shape([1, -1, -1, 3]))
    res_scale = g.const("res_scale", np.array(spec.res_scale, np.float32)) if spec.res_scale != 1.0 else None
    h = g.conv(x, head)
    y = h
    for i, (conv1, conv2) in enumerate(blocks):
        r = g.conv(g.add(f"block{i}/Relu", "Relu", [g.conv(y, conv1)], T=t), conv2)
        if res_scale is not None:
            r = g.add(f"block{i}/mul", "Mul", [r, res_scale], T=t)
        y = g.add(f"block{i}/add", "Add", [y, r], T=t)
    y = g.add("body/add", "Add", [g.conv(y, body_end), h], T=t)
    y = g.add(
        "DepthToSpace", "DepthToSpace", [g.conv(y, tail)], T=t,
        block_size=_attr_int(spec.scale), data_format=_attr_str("NHWC"),
    )
    perm = g.const("NCHW_output/perm", np.array([0, 3, 1, 2], np.int32))
    g.add(PB_OUTPUT, "Transpose", [y, perm], T=t, Tperm=_attr_type(DT_INT32))
    return g.serialise()


def export_graphdef(model: EDSR, path: Path | str) -> Path:
    """Write the EDSR as a frozen TensorFlow GraphDef at ``path``; returns the path."""
    return _write_atomic(Path(path), build_graphdef(model))


# --- files ------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write to a temp name beside ``path``, fsync, rename into place: no half-written model."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_all(model: EDSR, out_dir: Path | str, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.pb`` and ``<stem>.onnx`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    return export_graphdef(model, out_dir / f"{stem}.pb"), export_onnx(model, out_dir / f"{stem}.onnx")


def load_checkpoint(path: Path | str) -> EDSR:
    """EDSR from a checkpoint dict {spec, model[, ema]}; the EMA weights win when present."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = EDSR(EDSRSpec(**ckpt["spec"]))
    state = ckpt.get("ema") or ckpt["model"]
    # torch.optim.swa_utils.AveragedModel prefixes "module." and adds a counter.
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
    model.load_state_dict(state)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m srwatch.train.export CHECKPOINT OUT_DIR [--stem NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m srwatch.train.export",
        description="Export an EDSR checkpoint to <stem>.pb (dnn_superres 'edsr') and <stem>.onnx.",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--stem", help="output file name without suffix (default EDSR-srwatch_x<scale>)")
    args = parser.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    stem = args.stem or f"EDSR-srwatch_x{model.spec.scale}"
    for path in export_all(model, args.out_dir, stem):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
