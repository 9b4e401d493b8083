"""Qwen2.5-VL's vision encoder and text decoder written as ONNX graphs straight from the checkpoint's tensors.

    files = build_decoder(src, config, engine_dir / "decoder.onnx", precision="int4")

Why by hand: tracing (torch.onnx) needs the whole model in memory in float32, and the exporter then holds a
second copy in the protobuf; onnxruntime's quantizers load the whole graph again. Here each weight is read
from safetensors in its stored dtype, converted to the precision's form (fp32, fp16, int8 per channel,
int4 blocks through onnxruntime's own packing kernel) and appended to the external data file at once, so
peak memory is about one tensor, whatever the model's size. onnxruntime-genai's builder writes decoders this
way too, but it loads the model through transformers first, has no M-RoPE [3, 1, S] positions for an
inputs_embeds decoder and cannot write the vision tower. The graphs keep the engine contract the traced
graphs had (inputs, outputs, KV buffer, window-padded vision layout); tests hold them to the PyTorch reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_awares.runtimes.vision_layout import VISION_INPUTS, VISION_OUTPUT

OPSET = 18
# Masked attention scores (finite so that padded rows stay finite; fp16 clamps it).
_MASKED = -1.0e9
_ALIGN = 4096  # large tensors start on a page, so onnxruntime can map them
LINEAR_PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass
class Quant:
    """How linear layers are stored: fp32 | fp16 | int8 (per output channel, dynamic activations) | int4."""

    kind: str = "fp32"
    block_size: int = 32
    accuracy_level: int = 4

    @property
    def act(self) -> int:
        """The activations' ONNX dtype."""
        return TensorProto.FLOAT16 if self.kind == "fp16" else TensorProto.FLOAT


@dataclass
class GraphWriter:
    """Nodes of one graph; initializers go to one external data file as they are made (hashed as written)."""

    path: Path
    progress: object = None  # callable(n_done) or None
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    records: dict = field(default_factory=dict)  # initializer name -> (offset, bytes, dtype, shape)

    def __post_init__(self):
        self.path = Path(self.path)
        self.data_name = self.path.name + ".data"
        self._data = open(self.path.parent / self.data_name, "wb")
        self._sha = hashlib.sha256()
        self._offset = 0
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def init(self, name: str, array: np.ndarray) -> str:
        """Append `array` to the data file (page-aligned when large) and declare it as an initializer."""
        array = np.ascontiguousarray(array)
        if array.nbytes < 1024:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        pad = (-self._offset) % (_ALIGN if array.nbytes >= (1 << 20) else 64)
        if pad:
            self._write(b"\0" * pad)
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_name), ("offset", str(self._offset)), ("length", str(array.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.records[name] = (self._offset, array.nbytes, str(array.dtype), list(array.shape))
        self._write(memoryview(array).cast("B"))
        self.inits.append(t)
        return name

    def _write(self, b) -> None:
        self._data.write(b)
        self._sha.update(b)
        self._offset += len(b)

    def const(self, value, dtype=np.int64) -> str:
        return self.init(self.fresh("const"), np.asarray(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def finish(self, inputs: list, outputs: list, name: str) -> tuple[list[str], dict]:
        """Write the graph (weights already in the data file); returns (files, {file: (sha256, bytes)})."""
        self._data.close()
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                         helper.make_opsetid("com.microsoft", 1)],
                                  producer_name="edge-awares")
        model.ir_version = 9
        blob = model.SerializeToString()
        self.path.write_bytes(blob)
        digests = {self.path.name: (hashlib.sha256(blob).hexdigest(), len(blob)),
                   self.data_name: (self._sha.hexdigest(), self._offset)}
        return [self.path.name, self.data_name], digests


# -- shared pieces -----------------------------------------------------------------------------------------
def _cast(w: GraphWriter, x: str, to: int) -> str:
    return w.op("Cast", [x], to=to)


def rms_norm(w: GraphWriter, x: str, weight: np.ndarray, eps: float, q: Quant) -> str:
    """transformers' RMSNorm: normalise in float32, back to the activation dtype, times the weight."""
    xf = _cast(w, x, TensorProto.FLOAT) if q.act != TensorProto.FLOAT else x
    var = w.op("ReduceMean", [w.op("Mul", [xf, xf]), w.const([-1])], keepdims=1)
    inv = w.op("Reciprocal", [w.op("Sqrt", [w.op("Add", [var, w.const(np.float32(eps), np.float32)])])])
    y = w.op("Mul", [xf, inv])
    if q.act != TensorProto.FLOAT:
        y = _cast(w, y, q.act)
    return w.op("Mul", [w.init(w.fresh("norm"), weight.astype(_np(q.act))), y])


def _np(dtype: int):
    return np.float16 if dtype == TensorProto.FLOAT16 else np.float32


def linear(w: GraphWriter, x: str, weight: np.ndarray, bias: np.ndarray | None, q: Quant, name: str) -> str:
    """y = x @ weight.T + bias with `weight` [out, in] stored as the precision asks (one tensor in memory)."""
    out_f, in_f = weight.shape
    if q.kind in ("fp32", "fp16"):
        y = w.op("MatMul", [x, w.init(name, np.ascontiguousarray(weight.T).astype(_np(q.act)))])
    elif q.kind == "int8":
        # Symmetric per output channel; activations are quantized per call by the op (dynamic int8).
        scale = (np.abs(weight).max(axis=1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        qw = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
        y = w.op("DynamicQuantizeMatMul", [x, w.init(name + ".q8", np.ascontiguousarray(qw.T)),
                                           w.init(name + ".scale", scale),
                                           w.init(name + ".zero", np.zeros(out_f, np.int8))], domain="com.microsoft")
    elif q.kind == "int4":
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits

        bs = q.block_size
        blocks = -(-in_f // bs)
        kt = np.ascontiguousarray(weight.T, dtype=np.float32)  # [K, N], as MatMul's B
        if blocks * bs != in_f:
            kt = np.pad(kt, ((0, blocks * bs - in_f), (0, 0)))
        packed = np.zeros((out_f, blocks, bs // 2), np.uint8)
        scales = np.zeros((out_f, blocks), np.float32)
        zeros = np.zeros((out_f, (blocks + 1) // 2), np.uint8)
        quantize_matmul_4bits(packed, kt, scales, zeros, bs, out_f, blocks * bs, True)
        del kt
        y = w.op("MatMulNBits", [x, w.init(name + ".q4", packed), w.init(name + ".scale", scales.reshape(-1))],
                 domain="com.microsoft", K=in_f, N=out_f, bits=4, block_size=bs,
                 **({"accuracy_level": q.accuracy_level} if q.accuracy_level else {}))
    else:
        raise ValueError(f"unknown precision {q.kind!r}")
    if bias is not None:
        y = w.op("Add", [y, w.init(name + ".bias", bias.astype(_np(q.act)))])
    return y


def _rotate_half(w: GraphWriter, x: str, half: int) -> str:
    a, b = w.op("Split", [x, w.const([half, half])], n_out=2, axis=-1)
    return w.op("Concat", [w.op("Neg", [b]), a], axis=-1)


def _rope(w: GraphWriter, x: str, cos: str, sin: str, half: int) -> str:
    return w.op("Add", [w.op("Mul", [x, cos]), w.op("Mul", [_rotate_half(w, x, half), sin])])


def _silu_mul(w: GraphWriter, gate: str, up: str) -> str:
    return w.op("Mul", [w.op("Mul", [gate, w.op("Sigmoid", [gate])]), up])


def _vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


# -- decoder -----------------------------------------------------------------------------------------------
def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph names of the past and present key/value tensors, layer by layer (key then value)."""
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return past, present


@dataclass
class TextShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    theta: float
    mrope_section: list[int]
    tied: bool

    @classmethod
    def from_config(cls, config: dict, src) -> "TextShape":
        text = dict(config.get("text_config") or {})
        for k, v in config.items():  # older configs keep the text fields at the top level
            text.setdefault(k, v)
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        theta = float(rope.get("rope_theta", text.get("rope_theta", 1e6)))
        vocab = src.shape("model.language_model.embed_tokens.weight")[0]
        tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))) \
            or "lm_head.weight" not in src
        return cls(hidden=hidden, layers=int(text["num_hidden_layers"]), heads=heads,
                   kv_heads=int(text["num_key_value_heads"]), head_dim=int(text.get("head_dim") or hidden // heads),
                   vocab=int(vocab), eps=float(text.get("rms_norm_eps", 1e-6)), theta=theta,
                   mrope_section=[int(s) for s in rope.get("mrope_section", [16, 24, 24])], tied=tied)


def build_decoder(src, shape: TextShape, path: Path, q: Quant, progress=None) -> tuple[list[str], dict, dict]:
    """inputs_embeds [1, S, H] float32, position_ids [3, 1, S] int64, seqlens_k [1] int32,
    total_sequence_length [] int32, past key/values [1, kv, capacity, D] -> logits [1, vocab] float32 of the
    last position and the present buffers (GroupQueryAttention; bind past and present to one buffer).

    Returns (files, digests, extra): `extra["embeddings"]` says where the token table lies when it is
    stored inside the decoder's data (fp32/fp16 tied weights: the lm_head's own [vocab, hidden] matrix).
    """
    w = GraphWriter(path)
    s = shape
    half = s.head_dim // 2
    act, npact = q.act, _np(q.act)
    pre = "model.language_model."
    x = "inputs_embeds"
    if act != TensorProto.FLOAT:
        x = _cast(w, x, act)
    # M-RoPE: angles of the three position rows, then each rotary frequency takes its section's row.
    inv = 1.0 / (s.theta ** (np.arange(0, s.head_dim, 2, dtype=np.float32) / s.head_dim))
    freqs = w.op("Mul", [w.op("Unsqueeze", [_cast(w, "position_ids", TensorProto.FLOAT), w.const([-1])]),
                         w.const(inv.astype(np.float32), np.float32)])  # [3, 1, S, D/2]
    sel = np.zeros((3, 1, 1, half), np.float32)
    bounds = np.cumsum([0] + s.mrope_section)
    for i in range(len(s.mrope_section)):
        sel[i % 3, 0, 0, bounds[i]:bounds[i + 1]] = 1.0
    freqs = w.op("ReduceSum", [w.op("Mul", [freqs, w.init("mrope_select", sel)]), w.const([0])], keepdims=0)
    emb = w.op("Concat", [freqs, freqs], axis=-1)  # [1, S, D]
    cos = w.op("Unsqueeze", [w.op("Cos", [emb]), w.const([2])])  # [1, S, 1, D]
    sin = w.op("Unsqueeze", [w.op("Sin", [emb]), w.const([2])])
    if act != TensorProto.FLOAT:
        cos, sin = _cast(w, cos, act), _cast(w, sin, act)
    q_shape, k_shape = w.const([0, 0, s.heads, s.head_dim]), w.const([0, 0, s.kv_heads, s.head_dim])
    flat = w.const([0, 0, -1])
    past, present = kv_names(s.layers)
    h = x
    for i in range(s.layers):
        p = f"{pre}layers.{i}."
        a = p + "self_attn."
        xn = rms_norm(w, h, src.array(p + "input_layernorm.weight"), s.eps, q)

        def proj(n, bias=True):
            return linear(w, xn, src.array(a + n + ".weight"), src.array(a + n + ".bias") if bias else None, q,
                          f"layers.{i}.{n}")

        qq = _rope(w, w.op("Reshape", [proj("q_proj"), q_shape]), cos, sin, half)
        kk = _rope(w, w.op("Reshape", [proj("k_proj"), k_shape]), cos, sin, half)
        vv = proj("v_proj")
        o, pk, pv = w.op("GroupQueryAttention", [w.op("Reshape", [qq, flat]), w.op("Reshape", [kk, flat]), vv,
                                                 past[2 * i], past[2 * i + 1], "seqlens_k", "total_sequence_length"],
                         n_out=3, domain="com.microsoft", num_heads=s.heads, kv_num_heads=s.kv_heads,
                         scale=float(s.head_dim ** -0.5))
        w.nodes[-1].output[:] = [o, present[2 * i], present[2 * i + 1]]
        h = w.op("Add", [h, linear(w, o, src.array(a + "o_proj.weight"), None, q, f"layers.{i}.o_proj")])
        m = p + "mlp."
        xn = rms_norm(w, h, src.array(p + "post_attention_layernorm.weight"), s.eps, q)
        g = linear(w, xn, src.array(m + "gate_proj.weight"), None, q, f"layers.{i}.gate_proj")
        u = linear(w, xn, src.array(m + "up_proj.weight"), None, q, f"layers.{i}.up_proj")
        h = w.op("Add", [h, linear(w, _silu_mul(w, g, u), src.array(m + "down_proj.weight"), None, q,
                                   f"layers.{i}.down_proj")])
        if progress:
            progress(i + 1)
    last = w.op("Slice", [h, w.const([-1]), w.const([np.iinfo(np.int64).max]), w.const([1])])
    last = w.op("Squeeze", [rms_norm(w, last, src.array(pre + "norm.weight"), s.eps, q), w.const([1])])  # [1, H]
    head_name = pre + "embed_tokens.weight" if s.tied else "lm_head.weight"
    extra = {}
    if q.kind in ("fp32", "fp16"):
        # Gemm with transB reads the [vocab, hidden] matrix as stored: the same bytes serve as the
        # token-embedding table when the weights are tied (stored once).
        table = src.array(head_name).astype(npact)
        logits = w.op("Gemm", [last, w.init("lm_head.weight", table)], transB=1)
        if s.tied:
            off, nbytes, dtype, shp = w.records["lm_head.weight"]
            extra["embeddings"] = {"file": w.data_name, "offset": off, "dtype": dtype, "shape": shp}
        del table
    else:
        logits = linear(w, last, src.array(head_name), None, q, "lm_head")
    if act != TensorProto.FLOAT:
        logits = _cast(w, logits, TensorProto.FLOAT)
    w.nodes[-1].output[0] = "logits"
    kv_type = act
    inputs = [_vi("inputs_embeds", TensorProto.FLOAT, [1, "sequence", s.hidden]),
              _vi("position_ids", TensorProto.INT64, [3, 1, "sequence"]),
              _vi("seqlens_k", TensorProto.INT32, [1]), _vi("total_sequence_length", TensorProto.INT32, [])]
    inputs += [_vi(n, kv_type, [1, s.kv_heads, "capacity", s.head_dim]) for n in past]
    outputs = [_vi("logits", TensorProto.FLOAT, [1, s.vocab])]
    outputs += [_vi(n, kv_type, [1, s.kv_heads, "capacity", s.head_dim]) for n in present]
    files, digests = w.finish(inputs, outputs, "decoder")
    return files, digests, extra


# -- vision ------------------------------------------------------------------------------------------------
@dataclass
class VisionShape:
    hidden: int
    depth: int
    heads: int
    patch: int
    merge: int
    temporal: int
    window: int
    fullatt: list[int]
    out_hidden: int
    theta: float

    @property
    def in_features(self) -> int:
        return 3 * self.temporal * self.patch ** 2

    @classmethod
    def from_config(cls, config: dict) -> "VisionShape":
        v = config.get("vision_config") or {}
        rope = v.get("rope_parameters") or {}
        return cls(hidden=int(v.get("hidden_size", 1280)), depth=int(v.get("depth", 32)),
                   heads=int(v.get("num_heads", 16)), patch=int(v.get("patch_size", 14)),
                   merge=int(v.get("spatial_merge_size", 2)), temporal=int(v.get("temporal_patch_size", 2)),
                   window=int(v.get("window_size", 112)), fullatt=[int(i) for i in v.get("fullatt_block_indexes", [])],
                   out_hidden=int(v.get("out_hidden_size", 2048)), theta=float(rope.get("rope_theta", 10000.0)))


def build_vision(src, shape: VisionShape, path: Path, q: Quant, progress=None) -> tuple[list[str], dict]:
    """pixel_values [N, F] in window order + the host layout (runtimes/vision_layout.py) -> merged visual
    embeddings [N / merge^2, out_hidden] in natural order. Windowed and whole-image attention are batched
    over padded [segments, length] gathers; padding keys are masked."""
    w = GraphWriter(path)
    s = shape
    act = q.act
    dim = s.hidden // s.heads
    pre = "model.visual."
    x = "pixel_values" if act == TensorProto.FLOAT else _cast(w, "pixel_values", act)
    # The patch embedding is a Conv3d whose kernel equals its stride: one matmul over flattened patches.
    proj = src.array(pre + "patch_embed.proj.weight").reshape(s.hidden, -1)
    x = linear(w, x, proj, None, Quant("fp16" if act != TensorProto.FLOAT else "fp32"), "patch_embed")
    # 2-D rotary angles: (row, col) frequencies side by side, repeated for both halves of the head.
    spatial = dim // 2
    inv = 1.0 / (s.theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    ang = w.op("Mul", [w.op("Unsqueeze", [_cast(w, "rotary_pos", TensorProto.FLOAT), w.const([-1])]),
                       w.const(inv, np.float32)])  # [N, 2, dim/4]
    ang = w.op("Reshape", [ang, w.const([0, -1])])
    ang = w.op("Concat", [ang, ang], axis=-1)  # [N, dim]
    cos = w.op("Unsqueeze", [w.op("Cos", [ang]), w.const([1])])  # [N, 1, dim], float32 as transformers
    sin = w.op("Unsqueeze", [w.op("Sin", [ang]), w.const([1])])
    n_rows = w.op("Gather", [w.op("Shape", ["pixel_values"]), w.const(0)], axis=0)
    head_shape = w.const([0, s.heads, dim])
    pad = w.op("ConstantOfShape", [w.const([1, s.heads, dim])],
               value=helper.make_tensor("zero", act, [1], [0]))
    masks = {}
    for kind, index in (("window", "window_index"), ("image", "image_index")):
        valid = w.op("Less", [index, n_rows])  # [S, L]
        masks[kind] = w.op("Unsqueeze", [valid, w.const([1, 2])])  # [S, 1, 1, L]
    masked = w.const(np.float32(_MASKED), np.float32)
    back_shape = w.const([-1, s.hidden])
    for i in range(s.depth):
        p = f"{pre}blocks.{i}."
        kind = "image" if i in s.fullatt else "window"
        index, back = f"{kind}_index", f"{kind}_back"
        xn = rms_norm(w, x, src.array(p + "norm1.weight"), 1e-6, q)
        qkv = linear(w, xn, src.array(p + "attn.qkv.weight"), src.array(p + "attn.qkv.bias"), q, f"blocks.{i}.qkv")
        parts = w.op("Split", [qkv, w.const([s.hidden] * 3)], n_out=3, axis=-1)
        qh, kh, vh = (w.op("Reshape", [t, head_shape]) for t in parts)  # [N, heads, dim]
        if act != TensorProto.FLOAT:  # rotary in float32, as transformers does
            qh, kh = _cast(w, qh, TensorProto.FLOAT), _cast(w, kh, TensorProto.FLOAT)
        qh, kh = _rope(w, qh, cos, sin, dim // 2), _rope(w, kh, cos, sin, dim // 2)
        if act != TensorProto.FLOAT:
            qh, kh = _cast(w, qh, act), _cast(w, kh, act)

        def gather(t):  # [N, heads, dim] -> [segments, heads, length, dim]
            return w.op("Transpose", [w.op("Gather", [w.op("Concat", [t, pad], axis=0), index], axis=0)],
                        perm=[0, 2, 1, 3])

        qg, kg, vg = gather(qh), gather(kh), gather(vh)
        scores = w.op("Mul", [w.op("MatMul", [qg, w.op("Transpose", [kg], perm=[0, 1, 3, 2])]),
                              w.const(np.asarray(dim ** -0.5, _np(act)), _np(act))])
        scores = _cast(w, scores, TensorProto.FLOAT) if act != TensorProto.FLOAT else scores
        probs = w.op("Softmax", [w.op("Where", [masks[kind], scores, masked])], axis=-1)
        probs = _cast(w, probs, act) if act != TensorProto.FLOAT else probs
        out = w.op("Transpose", [w.op("MatMul", [probs, vg])], perm=[0, 2, 1, 3])  # [S, L, heads, dim]
        out = w.op("Gather", [w.op("Reshape", [out, back_shape]), back], axis=0)  # [N, hidden]
        x = w.op("Add", [x, linear(w, out, src.array(p + "attn.proj.weight"), src.array(p + "attn.proj.bias"), q,
                                   f"blocks.{i}.proj")])
        xn = rms_norm(w, x, src.array(p + "norm2.weight"), 1e-6, q)
        m = p + "mlp."
        g = linear(w, xn, src.array(m + "gate_proj.weight"), src.array(m + "gate_proj.bias"), q, f"blocks.{i}.gate")
        u = linear(w, xn, src.array(m + "up_proj.weight"), src.array(m + "up_proj.bias"), q, f"blocks.{i}.up")
        x = w.op("Add", [x, linear(w, _silu_mul(w, g, u), src.array(m + "down_proj.weight"),
                                   src.array(m + "down_proj.bias"), q, f"blocks.{i}.down")])
        if progress:
            progress(i + 1)
    mp = pre + "merger."
    x = rms_norm(w, x, src.array(mp + "ln_q.weight"), 1e-6, q)
    x = w.op("Reshape", [x, w.const([-1, s.hidden * s.merge ** 2])])
    x = linear(w, x, src.array(mp + "mlp.0.weight"), src.array(mp + "mlp.0.bias"), q, "merger.fc1")
    # exact (erf) GELU, nn.GELU's default
    xf = _cast(w, x, TensorProto.FLOAT) if act != TensorProto.FLOAT else x
    erf = w.op("Erf", [w.op("Mul", [xf, w.const(np.float32(1 / np.sqrt(2)), np.float32)])])
    xf = w.op("Mul", [w.op("Mul", [xf, w.const(np.float32(0.5), np.float32)]),
                      w.op("Add", [erf, w.const(np.float32(1.0), np.float32)])])
    x = _cast(w, xf, act) if act != TensorProto.FLOAT else xf
    x = linear(w, x, src.array(mp + "mlp.2.weight"), src.array(mp + "mlp.2.bias"), q, "merger.fc2")
    if act != TensorProto.FLOAT:
        x = _cast(w, x, TensorProto.FLOAT)
    w.op("Gather", [x, "merge_order"], axis=0)
    w.nodes[-1].output[0] = VISION_OUTPUT
    inputs = [_vi("pixel_values", TensorProto.FLOAT, ["patches", s.in_features]),
              _vi("rotary_pos", TensorProto.INT64, ["patches", 2]),
              _vi("window_index", TensorProto.INT64, ["windows", "window_len"]),
              _vi("window_back", TensorProto.INT64, ["patches"]),
              _vi("image_index", TensorProto.INT64, ["images", "image_len"]),
              _vi("image_back", TensorProto.INT64, ["patches"]),
              _vi("merge_order", TensorProto.INT64, ["tokens"])]
    if [i.name for i in inputs] != list(VISION_INPUTS):  # the runtime feeds VISION_INPUTS by name
        raise RuntimeError("vision graph inputs out of step with runtimes/vision_layout.py")
    return w.finish(inputs, [_vi(VISION_OUTPUT, TensorProto.FLOAT, ["tokens", s.out_hidden])], "vision")
