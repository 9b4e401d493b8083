"""The `ergo` protocol: the model names a free box, `<zoom>[x1, y1, x2, y2]</zoom>`, in pixel coordinates of
its first view (the image resized under a visual-token cap); the runtime scales it to the original, widens it
by an optional margin, clamps it, cuts it and shows it under the same cap; the answer comes in
`<answer>…</answer>`. A box that does not parse falls back to the whole image.

Prompts are interoperability constants from the public ERGO code (github.com/nota-github/ERGO,
src/ergo/const.py: SYSTEM_PROMPT, QUESTION_TEMPLATE1, QUESTION_TEMPLATE2).
"""

from __future__ import annotations

import re

from PIL import Image

from ..chat import Markup, Message
from ..crops import ALL, CropSet
from ..views import Geometry, View, box_view, make_view
from .base import Parsed, Protocol

SYSTEM_PROMPT = (
    "You are a helpful assistant. Given an image and one question. First, identify the coordinates "
    "of the key image area relevant to solving the problem. Append the coordinates in [x1, y1, x2, y2] "
    "format at the end of your response and stop. This will trigger cropping of the corresponding area in "
    "the original image and enlarge it for improved clarity. Once the enlarged image is available, provide the "
    "final answer."
)
QUESTION_TEMPLATE1 = (
    "{Question} First, consider how to zoom in on the image to include only the region containing all the "
    "information necessary to answer the question. Output the thinking process in <think> </think> tags and "
    "then output the region's bounding box coordinates in the following format <zoom>[x1, y1, x2, y2]</zoom> tags."
)
QUESTION_TEMPLATE2 = (
    "{Question}\nCarefully analyze both the original image and the enlarged sub-image to solve the question step "
    "by step. Present your reasoning clearly the following format strictly <think> ... <think>, and provide the "
    "final answer enclosed within <answer> ... </answer>"
)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_ZOOM = re.compile(r"<zoom>\s*\[" + ",".join([_NUM] * 4) + r"\]\s*(</zoom>)?", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.DOTALL | re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|<think>|$)", re.DOTALL | re.IGNORECASE)


class ErgoProtocol(Protocol):
    name = "ergo"

    def __init__(self, max_tokens: int = 640, margin: float = 0.0):
        self.max_tokens = max_tokens  # visual-token cap of the first view and of the zoomed crop (640 or 1280)
        self.margin = margin  # widen the box by this fraction of its size on each side (uncertainty)

    def geometry(self, base: Geometry) -> Geometry:
        return base.with_max_tokens(self.max_tokens)

    def first_view(self, image: Image.Image, geometry: Geometry) -> View:
        return make_view(image, geometry, "lowres")

    def system_prompt(self, crop_set: CropSet) -> str:
        return SYSTEM_PROMPT

    def user_turn(self, view: View, question: str) -> Message:
        return Message("user", [view, QUESTION_TEMPLATE1.format(Question=question)])

    def parse(self, text: str, crop_set: CropSet) -> Parsed:
        m = _ZOOM.search(text)
        if m is None:
            if "<zoom>" in text.lower():
                return Parsed("invalid", text, crop_ids=[ALL])
            return Parsed("answer", text, answer=self.answer_text(text))
        x1, y1, x2, y2 = (float(m.group(i)) for i in range(1, 5))
        if x2 <= x1 or y2 <= y1:
            return Parsed("invalid", text, crop_ids=[ALL])
        return Parsed("request", text, box=(x1, y1, x2, y2))

    def request_text(self, crop_ids, crop_set, first_view: View, image: Image.Image) -> str:
        # A forced request names the union of the crops' boxes, in first-view pixels.
        boxes = [crop_set.pixel_box(c, image.width, image.height) for c in crop_ids]
        sx, sy = first_view.width / image.width, first_view.height / image.height
        l, t = min(b[0] for b in boxes) * sx, min(b[1] for b in boxes) * sy
        r, b_ = max(b[2] for b in boxes) * sx, max(b[3] for b in boxes) * sy
        return Markup(f"<zoom>[{round(l)}, {round(t)}, {round(r)}, {round(b_)}]</zoom>")

    def original_box(self, parsed: Parsed, image: Image.Image, crop_set: CropSet, first_view: View):
        """The requested box in original-image pixels: scaled, widened by the margin, at least min_side, clamped."""
        if parsed.box is None:
            return (0, 0, image.width, image.height)
        x1, y1, x2, y2 = parsed.box
        sx, sy = image.width / first_view.width, image.height / first_view.height
        x1, x2, y1, y2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy
        mx, my = (x2 - x1) * self.margin, (y2 - y1) * self.margin
        x1, x2, y1, y2 = x1 - mx, x2 + mx, y1 - my, y2 + my
        x1, x2 = _at_least(x1, x2, crop_set.min_side, image.width)
        y1, y2 = _at_least(y1, y2, crop_set.min_side, image.height)
        return (int(x1), int(y1), int(round(x2)), int(round(y2)))

    def crop_views(self, parsed, image, crop_set, geometry: Geometry, first_view: View) -> list[View]:
        return [box_view(image, self.original_box(parsed, image, crop_set, first_view), geometry)]

    def crop_turn(self, views: list[View], question: str) -> Message:
        return Message("user", [*views, QUESTION_TEMPLATE2.format(Question=question)])

    def answer_text(self, text: str) -> str:
        m = _ANSWER.search(text)
        if m:
            return m.group(1).strip()
        return _ZOOM.sub("", _THINK.sub("", text)).strip()

    def to_dict(self) -> dict:
        return {"name": self.name, "max_tokens": self.max_tokens, "margin": self.margin}


def _at_least(a: float, b: float, min_len: float, size: int) -> tuple[float, float]:
    """Grow [a, b] around its centre to at least min_len (or the whole side), then clamp into [0, size]."""
    min_len = min(min_len, size)
    if b - a < min_len:
        c = (a + b) / 2
        a, b = c - min_len / 2, c + min_len / 2
    if a < 0:
        a, b = 0, b - a
    if b > size:
        a, b = a - (b - size), size
    return max(0.0, a), min(float(size), b)
