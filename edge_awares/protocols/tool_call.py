"""The `tool_call` protocol: a Qwen/Hermes JSON tool call naming crop ids; crops return in a tool turn.

`<tool_call>\n{"name": "crop", "arguments": {"regions": ["0", "4"]}}\n</tool_call>` is the form TRL's
multi-turn GRPO parses, so it is the default for policies this toolkit trains. The tool schema below is the
one rendered into the system prompt; training passes the same schema (tests hold the ids equal).
"""

from __future__ import annotations

import ast
import json
import re

from PIL import Image

from ..chat import Markup, Message
from ..crops import CropSet
from ..views import View
from .base import Parsed, Protocol, resolve_tokens

TOOL_NAME = "crop"
_CALL = re.compile(r"<tool_call>\s*(?P<body>.*?)\s*(</tool_call>|$)", re.DOTALL)
_ARG_KEYS = ("regions", "region", "crops", "crop", "ids", "crop_ids")

SYSTEM_PROMPT = (
    "You are a helpful assistant. You see a low-resolution view of the image. If it is clear enough, answer "
    "directly and briefly. Otherwise call the crop tool once to see regions of the original image at full "
    "resolution, then answer."
)


def crop_tool_schema(crop_set: CropSet) -> dict:
    regions = "; ".join(f"{c.id}: {c.name}" for c in crop_set.crops)
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Return regions of the original image at full resolution.",
            "parameters": {
                "type": "object",
                "properties": {
                    "regions": {
                        "type": "array",
                        "items": {"type": "string", "enum": crop_set.ids},
                        "description": f"Region ids to fetch ({regions}).",
                    }
                },
                "required": ["regions"],
            },
        },
    }


class ToolCallProtocol(Protocol):
    name = "tool_call"

    def system_prompt(self, crop_set: CropSet) -> str:
        return SYSTEM_PROMPT

    def tools(self, crop_set: CropSet) -> list[dict]:
        return [crop_tool_schema(crop_set)]

    def parse(self, text: str, crop_set: CropSet) -> Parsed:
        m = _CALL.search(text)
        if m is None:
            return Parsed("answer", text, answer=text.strip())
        call = _loads(m.group("body"))
        tokens = _regions(call) if isinstance(call, dict) else None
        if tokens is None:
            return Parsed("invalid", text, crop_ids=list(self.fallback_crops))
        ids, dropped = resolve_tokens(tokens, crop_set)
        if not ids:
            return Parsed("invalid", text, crop_ids=list(self.fallback_crops), dropped=dropped)
        return Parsed("request", text, crop_ids=ids, dropped=dropped)

    def request_text(self, crop_ids, crop_set, first_view: View, image: Image.Image) -> str:
        args = json.dumps({"regions": list(crop_ids)}, ensure_ascii=False)
        return Markup('<tool_call>\n{"name": "' + TOOL_NAME + '", "arguments": ' + args + "}\n</tool_call>")

    def crop_turn(self, views: list[View], question: str) -> Message:
        return Message("tool", list(views))

    def answer_text(self, text: str) -> str:
        return _CALL.sub("", text).strip()


def _loads(body: str):
    """JSON first; then Python-literal syntax (single quotes), which small policies often write."""
    for load in (json.loads, ast.literal_eval):
        try:
            return load(body)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _regions(call: dict) -> list[str] | None:
    if call.get("name", TOOL_NAME) != TOOL_NAME:
        return None
    args = call.get("arguments", call)
    if isinstance(args, str):
        args = _loads(args)
    if not isinstance(args, dict):
        return None
    for key in _ARG_KEYS:
        if key in args:
            v = args[key]
            if isinstance(v, (str, int)):
                return re.split(r"[,;]+", str(v))
            if isinstance(v, list):
                return [str(x) for x in v]
            return None
    return None
