"""Trajectories as TRL trains them: a protocol-neutral trajectory becomes chat messages and images through the
protocol objects and the runtime's own view code (views.py), the same calls `Session.run` makes.

Images reach TRL at model-input size (already cut and resized by edge_awares.views) and the processor is built
with the protocol's view geometry, so it neither resizes nor re-grids them: pixels and visual-token counts are
the runtime's. tests/test_train_render.py holds the ids and the loss mask equal to a Session's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..chat import Message, check_content
from ..crops import CropSet
from ..data.format import Trajectory
from ..errors import BackendUnavailableError, DataError, ProtocolError, TrainError
from ..images import load_image
from ..protocols import Protocol
from ..views import Geometry, View, box_view, crop_views

# TRL's tool-capable template: Qwen2.5-VL's own template cannot render assistant tool calls, and TRL's GRPO
# parses tool calls only for the templates it knows (this one maps to its Qwen3 response parser).
CHAT_TEMPLATE = "trl.chat_template_utils.qwen3_vl_chat_template"


def chat_templates() -> tuple[str, str]:
    """(inference template, training template with generation markers), both from TRL (never copied here)."""
    try:
        from trl.chat_template_utils import qwen3_vl_chat_template, qwen3_vl_training_chat_template
    except ImportError:
        raise BackendUnavailableError("training needs TRL: pip install 'edge-awares[train]'") from None
    return qwen3_vl_chat_template, qwen3_vl_training_chat_template


def model_image(view: View) -> Image.Image:
    """The view at model-input size, resized exactly as `View.pixel_values` resizes it (BICUBIC)."""
    if view.source.size == (view.width, view.height):
        return view.source
    return view.source.resize((view.width, view.height), Image.Resampling.BICUBIC)


def make_processor(model_dir: str | Path, geometry: Geometry):
    """A Qwen2.5-VL processor for TRL: the checkpoint's tokenizer with TRL's tool-capable chat template and an
    image processor with the protocol's `geometry` (so view-sized images pass through unchanged).

    transformers' Qwen2_5_VLProcessor insists on a video processor, which needs torchvision; a subclass without
    one is enough for images (FACTS.md). Raises BackendUnavailableError without transformers/TRL.
    """
    try:
        from transformers import AutoTokenizer, Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.processing_utils import ProcessorMixin
    except ImportError as e:
        raise BackendUnavailableError(f"training needs transformers ({e.name} missing): "
                                      "pip install 'edge-awares[train]'") from None

    class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    template, _ = chat_templates()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    tok.chat_template = template
    g = geometry
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=g.min_pixels, max_pixels=g.max_pixels, patch_size=g.patch_size, merge_size=g.merge_size,
        temporal_patch_size=g.temporal_patch_size, image_mean=list(g.image_mean), image_std=list(g.image_std))
    return ImageOnlyQwen25VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)


@dataclass
class Conversation:
    """One trajectory rendered for a protocol: runtime Messages (with Views), one weight per assistant message."""

    system: str | None
    tools: list[dict] | None
    messages: list[Message]
    weights: list[float]  # per assistant message, in order
    requests: list[bool]  # per assistant message: is it a crop request?
    views: list[View] = field(default_factory=list)  # every image, in order of appearance


def view_ref(view: View, path: str) -> str:
    """A JSON reference from which `resolve_view` rebuilds `view` from the original image (lazy images: a dataset
    row holds strings, not pixels, so large sets fit in memory)."""
    ref = {"path": path, "kind": view.kind}
    if view.kind == "crop":
        ref["crop_id"] = view.crop_id
    elif view.kind == "box":
        ref["box"] = list(view.box)
    elif view.kind != "lowres":
        raise TrainError(f"cannot train on a {view.kind!r} view")
    return json.dumps(ref)


class TrajectoryRenderer:
    """Renders trajectories for one protocol, crop set and checkpoint geometry.

    `request_weight` multiplies the loss of every crop-request turn (AwaRes: 5); answers weigh 1.
    """

    def __init__(self, protocol: Protocol, crop_set: CropSet, geometry: Geometry, request_weight: float = 5.0,
                 control_texts: tuple[str, ...] = ()):
        self.protocol, self.crop_set = protocol, crop_set
        self.control_texts = tuple(control_texts)  # the tokenizer's added tokens: refused in content (chat.check_content)
        self.geometry = protocol.geometry(geometry)  # what Session uses
        self.request_weight = float(request_weight)
        self._cache: tuple[str, Image.Image] | None = None

    def tools(self) -> list[dict] | None:
        return self.protocol.tools(self.crop_set)

    def image(self, path) -> Image.Image:
        """The original image (the last one is kept: a row's views share it)."""
        key = str(path)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, load_image(path))
        return self._cache[1]

    def conversation(self, traj: Trajectory, image: Image.Image | None = None) -> Conversation:
        """Render `traj` with the same protocol calls the session makes. Raises DataError for a malformed trajectory
        and TrainError for one the protocol or crop set cannot express."""
        p, cs, g = self.protocol, self.crop_set, self.geometry
        image = image if image is not None else self.image(traj.image)
        msgs: list[Message] = []
        weights, requests, views = [], [], []
        first: View | None = None
        pending = None  # the parsed request whose crops the next tool turn shows
        for i, m in enumerate(traj.messages):
            role = m["role"]
            where = f"trajectory {traj.id!r}, message {i}"
            check_content(traj.question if role == "user" and i == 0 else "", self.control_texts, where)
            check_content(_text(m), self.control_texts, where)
            if role == "user":
                if i != 0:
                    raise DataError(f"{where}: only the first message may be the user's (the crop turn is 'tool')")
                first = p.first_view(image, g)
                views.append(first)
                msgs.append(p.user_turn(first, _text(m) or traj.question))
            elif role == "assistant" and "request" in m:
                ids = [str(c) for c in m["request"]]
                unknown = [c for c in ids if c not in cs.ids]
                if unknown:
                    raise TrainError(f"{where}: crop ids {unknown} are not in crop set {cs.name!r} "
                                     f"(legal: {', '.join(cs.ids)}); the data was made for another crop set")
                try:
                    text = p.request_text(ids, cs, first, image)
                except ProtocolError as e:
                    raise TrainError(f"{where}: protocol {p.name!r} cannot express a crop request ({e})") from None
                pending = p.parse(text, cs)  # the runtime's parser decides what the request fetches
                if pending.kind != "request":
                    raise TrainError(f"{where}: protocol {p.name!r} does not parse its own request {text!r}")
                msgs.append(Message("assistant", [text]))  # a Markup: the policy's own tool call
                weights.append(self.request_weight)
                requests.append(True)
            elif role == "tool":
                if pending is None:
                    raise DataError(f"{where}: a tool turn must follow a crop request")
                crops = p.crop_views(pending, image, cs, g, first)
                named = [c.get("crop_id") for c in m.get("content", []) if c.get("type") == "image"]
                if pending.crop_ids and named and [str(c) for c in named] != pending.crop_ids:
                    raise DataError(f"{where}: the tool turn shows crops {named} but the request asked for "
                                    f"{pending.crop_ids}")
                views += crops
                msgs.append(p.crop_turn(crops, traj.question))
                pending = None
            elif role == "assistant":
                msgs.append(Message("assistant", [_text(m)]))
                weights.append(1.0)
                requests.append(False)
            else:
                raise DataError(f"{where}: unknown role {role!r}")
        if first is None:
            raise DataError(f"trajectory {traj.id!r} has no user turn")
        return Conversation(p.system_prompt(cs), self.tools(), msgs, weights, requests, views)

    def row(self, traj: Trajectory) -> dict:
        """One SFT dataset row in TRL's conversational-vision format: `messages` with image placeholders in every
        turn (tool turns included), `images` as lazy view references, `tools`, and per-assistant-turn weights."""
        conv = self.conversation(traj)
        path = str(Path(traj.image).resolve())
        messages = []
        if conv.system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": conv.system}]})
        messages += [to_trl(m) for m in conv.messages]
        return {
            "id": traj.id,
            "messages": messages,
            "images": [view_ref(v, path) for v in conv.views],
            "tools": json.dumps(conv.tools) if conv.tools else "",
            "loss_weights": conv.weights,
        }

    def resolve_view(self, ref: str) -> View:
        """Rebuild the View a `view_ref` names, with the same calls the session makes."""
        d = json.loads(ref)
        image = self.image(d["path"])
        kind = d["kind"]
        if kind == "lowres":
            return self.protocol.first_view(image, self.geometry)
        if kind == "crop":
            return crop_views(image, self.crop_set, [d["crop_id"]], self.geometry)[0]
        if kind == "box":
            return box_view(image, tuple(d["box"]), self.geometry)
        raise TrainError(f"unknown view reference {ref!r}")


def to_trl(msg: Message, images: bool = False) -> dict:
    """A runtime Message as a transformers chat message: Views become image blocks (placeholders unless
    `images`, then with the model-input-size image), strings become text blocks."""
    content = []
    for c in msg.content:
        if isinstance(c, View):
            content.append({"type": "image", "image": model_image(c)} if images else {"type": "image"})
        else:
            content.append({"type": "text", "text": c})
    return {"role": msg.role, "content": content}


def _text(m: dict) -> str:
    return "".join(c.get("text") or "" for c in m.get("content", []) if c.get("type") == "text")


def fill_images(messages: list[dict], images: list) -> list[dict]:
    """Put `images` into the image placeholders of every message, in order.

    TRL's `prepare_multimodal_messages` skips tool messages when it fills placeholders, so crops inside a tool
    turn would never reach the processor; this fills every role.
    """
    out, k = [], 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            new = []
            for block in content:
                if block.get("type") == "image" and block.get("image") is None:
                    if k >= len(images):
                        raise TrainError(f"more image placeholders than images ({len(images)})")
                    block = {"type": "image", "image": images[k]}
                    k += 1
                elif block.get("type") == "text":
                    block = {"type": "text", "text": block.get("text") or ""}
                new.append(block)
            m = {**m, "content": new}
        out.append({k2: v for k2, v in m.items() if v is not None})
    if k != len(images):
        raise TrainError(f"{len(images)} images for {k} image placeholders")
    return out


def sampled_mask(input_ids, assistant_masks, turn_weights: list[list[float]], im_end_id: int):
    """Loss mask and per-token weights from the template's assistant spans.

    The training template marks `content<|im_end|>\\n` of each assistant turn; the model samples only up to
    `<|im_end|>` (the newline is prefilled with the next turn), so tokens after it are dropped: the mask equals the
    session's (1 = sampled by the model). Span k takes `turn_weights[row][k]`. Returns (mask, weights) tensors.
    Raises TrainError when the spans do not match the assistant turns.
    """
    import torch

    mask = torch.zeros_like(input_ids)
    weights = torch.zeros(input_ids.shape, dtype=torch.float32)
    for b in range(input_ids.shape[0]):
        on = assistant_masks[b].tolist()
        ids = input_ids[b].tolist()
        spans, t = [], 0
        while t < len(on):
            if on[t]:
                s = t
                while t < len(on) and on[t]:
                    t += 1
                spans.append((s, t))
            else:
                t += 1
        if len(spans) != len(turn_weights[b]):
            raise TrainError(f"the chat template marked {len(spans)} assistant spans but the conversation has "
                             f"{len(turn_weights[b])} assistant turns")
        for (s, e), w in zip(spans, turn_weights[b]):
            end = next((j + 1 for j in range(s, e) if ids[j] == im_end_id), e)
            mask[b, s:end] = 1
            weights[b, s:end] = float(w)
    return mask, weights


__all__ = ["TrajectoryRenderer", "Conversation", "make_processor", "model_image", "chat_templates", "fill_images",
           "sampled_mask", "to_trl", "view_ref", "CHAT_TEMPLATE"]
