"""Torch modules that re-express Qwen2.5-VL's vision encoder and text decoder as exportable graphs.

Both wrap the Hugging Face model's own submodules (weights, norms, MLPs, rotary embeddings), and replace
only what an ONNX graph cannot express or should not copy:
- vision: the per-window attention loop becomes one batched attention over a padded [windows, length]
  layout whose indices come from the host (runtimes/vision_layout.py), so one graph takes any number of
  images of any size;
- decoder: attention goes through onnxruntime's GroupQueryAttention with past and present bound to one
  preallocated buffer, so each step writes its keys/values in place; logits are computed for the last
  position only (FACTS.md: that halves prefill).
"""

from __future__ import annotations

import torch
from torch import nn

from edge_awares.runtimes.vision_layout import VISION_INPUTS, VISION_OUTPUT

# Keys masked out of attention get this score: finite, so a padded query row never becomes NaN, and far
# below any real score. The fp16 converter clamps it to the fp16 range.
_MASKED = -1.0e9


class VisionGraph(nn.Module):
    """pixel_values (window order) + host layout -> merged visual embeddings in natural order."""

    input_names = list(VISION_INPUTS)
    output_names = [VISION_OUTPUT]

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.full = set(visual.fullatt_block_indexes)

    def forward(self, pixel_values, rotary_pos, window_index, window_back, image_index, image_back, merge_order):
        v = self.visual
        x = v.patch_embed(pixel_values)
        cos, sin = v.rotary_pos_emb(x, rotary_pos)
        for i, blk in enumerate(v.blocks):
            index, back = (image_index, image_back) if i in self.full else (window_index, window_back)
            x = x + _segment_attention(blk.attn, blk.norm1(x), cos, sin, index, back)
            x = x + blk.mlp(blk.norm2(x))
        return v.merger(x)[merge_order]


def _segment_attention(attn, x, cos, sin, index, back):
    """Bidirectional attention within segments, batched over a padded [segments, length] gather layout."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    n = x.shape[0]
    heads, dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(n, 3, heads, dim).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    pad = x.new_zeros(1, heads, dim)

    def gather(t):  # [n, heads, dim] -> [segments, heads, length, dim]
        return torch.cat([t, pad], 0)[index].transpose(1, 2)

    q, k, v = gather(q), gather(k), gather(v)
    valid = (index < n)[:, None, None, :]
    scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    scores = scores.masked_fill(~valid, _MASKED)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(-1, heads * dim)[back]
    return attn.proj(out)


class _GroupQueryAttention(torch.autograd.Function):
    """Exports as com.microsoft::GroupQueryAttention (shared past/present buffer). The eager forward is a
    reference implementation, used only while tracing and in tests of the wrapper itself."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total_len, num_heads, kv_heads, scale):
        b, s, _ = q.shape
        dim = past_k.shape[-1]
        end = int(seqlens_k[0]) + 1
        start = end - s
        present_k, present_v = past_k.clone(), past_v.clone()
        present_k[:, :, start:end] = k.view(b, s, kv_heads, dim).transpose(1, 2)
        present_v[:, :, start:end] = v.view(b, s, kv_heads, dim).transpose(1, 2)
        rep = num_heads // kv_heads
        keys = present_k[:, :, :end].repeat_interleave(rep, 1)
        values = present_v[:, :, :end].repeat_interleave(rep, 1)
        query = q.view(b, s, num_heads, dim).transpose(1, 2)
        scores = torch.matmul(query, keys.transpose(2, 3)) * scale
        causal = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), values)
        return out.transpose(1, 2).reshape(b, s, num_heads * dim), present_k, present_v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total_len, num_heads, kv_heads, scale):
        out, pk, pv = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k, total_len,
                           num_heads_i=num_heads, kv_num_heads_i=kv_heads, scale_f=scale, outputs=3)
        out.setType(q.type())
        pk.setType(past_k.type())
        pv.setType(past_v.type())
        return out, pk, pv


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph names of the past and present key/value tensors, layer by layer (key then value)."""
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return past, present


class DecoderGraph(nn.Module):
    """inputs_embeds [1, S, H], position_ids [3, 1, S] (M-RoPE), seqlens_k [1] (= cache length after this
    call - 1), total_sequence_length [] and one past key and value per layer [1, kv_heads, capacity, dim]
    -> logits [1, vocab] of the last position and the present buffers (the same memory when bound so)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.lm = model.model.language_model
        self.lm_head = model.lm_head
        cfg = self.lm.config
        self.num_heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.num_layers = int(cfg.num_hidden_layers)
        self.input_names = ["inputs_embeds", "position_ids", "seqlens_k", "total_sequence_length"]
        past, present = kv_names(self.num_layers)
        self.input_names += past
        self.output_names = ["logits"] + present

    def forward(self, inputs_embeds, position_ids, seqlens_k, total_len, *past):
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

        b, s, _ = inputs_embeds.shape
        cos, sin = self.lm.rotary_emb(inputs_embeds, position_ids)
        h = inputs_embeds
        presents = []
        for i, layer in enumerate(self.lm.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            q = q.transpose(1, 2).reshape(b, s, -1)
            k = k.transpose(1, 2).reshape(b, s, -1)
            v = a.v_proj(x)
            o, pk, pv = _GroupQueryAttention.apply(q, k, v, past[2 * i], past[2 * i + 1], seqlens_k, total_len,
                                                   self.num_heads, self.kv_heads, float(a.scaling))
            presents += [pk, pv]
            h = h + a.o_proj(o)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        # Only the last position's logits are needed by the session (prefill or decode step).
        last = self.lm.norm(h[:, -1:, :])
        return (self.lm_head(last)[:, 0, :], *presents)
