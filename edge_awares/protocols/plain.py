"""The `plain` protocol: no crop tool. A base model answers from one view (low-res or native). Used for
curation (the base model's low-res and native answers) and for baselines; it never parses a request."""

from __future__ import annotations

from ..chat import Message
from ..crops import CropSet
from ..views import View
from .base import Parsed, Protocol

SYSTEM_PROMPT = "You are a helpful assistant."


class PlainProtocol(Protocol):
    name = "plain"

    def system_prompt(self, crop_set: CropSet) -> str:
        return SYSTEM_PROMPT

    def parse(self, text: str, crop_set: CropSet) -> Parsed:
        return Parsed("answer", text, answer=text.strip())

    def request_text(self, crop_ids, crop_set, first_view, image) -> str:
        from ..errors import ProtocolError

        raise ProtocolError("the plain protocol has no crop tool; use --crops model or none")

    def crop_turn(self, views: list[View], question: str) -> Message:
        return Message("user", list(views))
