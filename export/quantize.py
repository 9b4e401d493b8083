"""Static Q/DQ int8 of the vision graph with onnxruntime's quantizer (`--vision-precision int8-qdq`).

fp16, dynamic int8 and int4 weights are written as the graphs are built (export/builder.py). Static Q/DQ
needs activation ranges, so it runs afterwards over the fp32 vision graph: symmetric int8 activations
calibrated on views and crops (calibration/), the form TensorRT reads for explicit INT8. The Q/DQ quantizer
rejects exported Gemm biases as non-constant (FACTS.md), so any Gemm is rewritten to MatMul (+ Add) first.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def save_model(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save with all weights in one external file beside the graph; returns the files written (names)."""
    path = Path(path)
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    return [path.name] + ([data] if (path.parent / data).exists() else [])


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm(A, B[, C]) with a constant B as MatMul(A, B') (+ Add C) in place; returns the count."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes, changed = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            b = np.ascontiguousarray(b.T)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(b, node.input[1]))
        out = node.output[0]
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = out + "_matmul" if has_bias else out
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name + "_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [out], name=node.name + "_bias"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


def weight_nodes(model: onnx.ModelProto, op_types=("MatMul", "Gemm", "Conv")) -> list[str]:
    """Names of nodes whose second input is a constant weight (activation x activation products stay float)."""
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in op_types and len(n.input) > 1 and (n.input[1] in inits or n.input[1] in consts)]


def vision_int8(src: Path, dst: Path, reader) -> list[str]:
    """Static Q/DQ int8 with a calibration reader (calibration.vision.VisionCalibrationReader)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

        def rewind(self):
            reader.rewind()

    # Gemm -> MatMul + Add: the Q/DQ quantizer wants constant Gemm biases, which the exporter does not
    # always give; a float bias Add after an int8 MatMul is also what TensorRT fuses best.
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    plain = dst.with_name(dst.stem + ".matmul.onnx")
    save_model(model, plain)
    nodes = weight_nodes(model)
    with _quiet_logs():
        quantize_static(str(plain), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
                        # Not CalibMaxIntermediateOutputs: onnxruntime 1.32's MinMax calibrator discards the
                        # collected outputs when that bound is reached instead of folding them into its ranges
                        # ("No data is collected"). This path keeps every batch's intermediates: it is for
                        # TensorRT builds of small vision towers; the default int8 vision needs no calibration.
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    for f in (plain, plain.with_name(plain.name + ".data")):
        f.unlink(missing_ok=True)
    return _resave(dst)


@contextlib.contextmanager
def _quiet_logs():
    """onnxruntime's quantizers log advice (pre-processing, constant biases) on the root logger at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _resave(path: Path) -> list[str]:
    """Re-save a quantizer's output in this module's one-file external-data layout."""
    model = onnx.load(str(path))
    for stray in path.parent.glob(path.name + "*.data"):
        stray.unlink()
    return save_model(model, path)
