"""The `awares` protocol: the released AwaRes weights' plain-text request, `GET_CROPS: ['3']`.

The system prompt is an interoperability constant: it is the one the released weights were trained with,
from the public AwaRes evaluation code (github.com/NimrodShabtay/AwaRes, lmms_eval/qwen2_5_vl_awares.py,
`VISION_MODEL_SHORT_SYSTEM_PROMPT` with `INDS_NOT_WORDS = True`; paper supplement §7.3), where the crop map
is formatted as a Python dict. Crops come back as a user turn that holds only the crop images. Views: low-res
= half width and height (LANCZOS); every image capped at 2048 visual tokens (min 32).

Unlike the released parser (which iterates characters and so fetches the whole image on a space or on
several ids), this parser accepts spacing, quotes, ids or names, several ids and duplicates.
"""

from __future__ import annotations

import re

from PIL import Image

from ..chat import Markup, Message
from ..crops import CropSet
from ..views import Geometry, View
from .base import Parsed, Protocol, resolve_tokens

TOOL_CALL_PATTERN = "GET_CROPS"
_REQUEST = re.compile(r"GET[ _-]?CROPS?\s*:?\s*(\[(?P<list>[^\]]*)\]?|(?P<bare>[^\n]*))", re.IGNORECASE)


class AwaresProtocol(Protocol):
    name = "awares"

    def geometry(self, base: Geometry) -> Geometry:
        # The released evaluation: min_pixels 32*28*28, max_pixels 2048*28*28 for every image.
        f = base.factor
        return Geometry(**{**base.__dict__, "min_pixels": 32 * f * f, "max_pixels": 2048 * f * f})

    def system_prompt(self, crop_set: CropSet) -> str:
        crop_map = {c.id: c.name for c in crop_set.crops}
        return (
            "You are a vision-language model that analyzes images and answers questions about them. "
            f"If the image resolution is too low for accurate analysis, respond with {TOOL_CALL_PATTERN} "
            "[<crop_number>] to get a higher resolution version, the avalible <crop_numbers> and their "
            f"corresponding area of the high resolution image are {crop_map} ,otherwise provide your answer."
        )

    def parse(self, text: str, crop_set: CropSet) -> Parsed:
        m = _REQUEST.search(text)
        if m is None:
            return Parsed("answer", text, answer=text.strip())
        body = m.group("list") if m.group("list") is not None else (m.group("bare") or "")
        ids, dropped = resolve_tokens(re.split(r"[,;]+", body), crop_set)
        if not ids:
            return Parsed("invalid", text, crop_ids=list(self.fallback_crops), dropped=dropped)
        return Parsed("request", text, crop_ids=ids, dropped=dropped)

    def request_text(self, crop_ids, crop_set, first_view: View, image: Image.Image) -> str:
        return Markup(f"{TOOL_CALL_PATTERN}: [" + ", ".join(f"'{c}'" for c in crop_ids) + "]")

    def crop_turn(self, views: list[View], question: str) -> Message:
        return Message("user", list(views))
