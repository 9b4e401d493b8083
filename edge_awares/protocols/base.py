"""The protocol interface: the prompt, the request syntax, its parser and the crop turn of one policy family.

A protocol is pure text and geometry: it never touches a model. The session, training and every runtime
backend go through the same Protocol object, so what is trained is what is deployed.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image

from ..chat import Message
from ..crops import ALL, CropSet
from ..views import Geometry, View, crop_views, lowres_view


@dataclass
class Parsed:
    """What the model wrote in one turn.

    kind: "answer" (no request), "request" (a valid request) or "invalid" (a request that did not parse;
    the protocol's fallback was applied and `crop_ids`/`box` hold what the fallback fetches).
    """

    kind: str
    raw: str
    answer: str = ""
    crop_ids: list[str] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # free box in first-view pixels (ERGO)
    dropped: list[str] = field(default_factory=list)  # request tokens that named no crop

    @property
    def is_request(self) -> bool:
        return self.kind in ("request", "invalid")


class Protocol(ABC):
    """One family of policies' conversation format."""

    name: str = ""
    # Stated fallback for a request that does not parse: fetch the whole image, count it as a parse failure.
    fallback_crops: tuple[str, ...] = (ALL,)

    def geometry(self, base: Geometry) -> Geometry:
        """The view geometry this protocol uses, given the checkpoint's."""
        return base

    def first_view(self, image: Image.Image, geometry: Geometry) -> View:
        return lowres_view(image, geometry)

    @abstractmethod
    def system_prompt(self, crop_set: CropSet) -> str | None: ...

    def tools(self, crop_set: CropSet) -> list[dict] | None:
        return None

    def user_turn(self, view: View, question: str) -> Message:
        return Message("user", [view, question])

    @abstractmethod
    def parse(self, text: str, crop_set: CropSet) -> Parsed: ...

    @abstractmethod
    def request_text(self, crop_ids: list[str], crop_set: CropSet, first_view: View, image: Image.Image) -> str:
        """The assistant text of a request for `crop_ids`, as the policy is trained to write it: a chat.Markup,
        since it is the policy's own writing (an added token's text in it, `<tool_call>`, is that token)."""

    def crop_views(self, parsed: Parsed, image: Image.Image, crop_set: CropSet, geometry: Geometry,
                   first_view: View) -> list[View]:
        return crop_views(image, crop_set, parsed.crop_ids, geometry)

    @abstractmethod
    def crop_turn(self, views: list[View], question: str) -> Message: ...

    def answer_text(self, text: str) -> str:
        return text.strip()

    def to_dict(self) -> dict:
        return {"name": self.name}


def dedupe(ids: list[str]) -> list[str]:
    """Order-preserving de-duplication; `all` swallows every other crop (it contains them)."""
    out: list[str] = []
    for i in ids:
        if i not in out:
            out.append(i)
    return [ALL] if ALL in out else out


def resolve_tokens(items: list[str], crop_set: CropSet) -> tuple[list[str], list[str]]:
    """Map request items (ids or names) to crop ids; returns (ids, words that named no crop).

    An item is tried whole first ("bottom right" is one name), then word by word ("0 4" is two ids).
    """
    ids, dropped = [], []
    for item in items:
        item = _clean(item)
        if not item:
            continue
        cid = crop_set.resolve(item)
        if cid is not None:
            ids.append(cid)
            continue
        for word in re.split(r"\s+", item):
            word = _clean(word)
            if word:
                cid = crop_set.resolve(word)
                (ids if cid is not None else dropped).append(cid if cid is not None else word)
    return dedupe(ids), dropped


def _clean(s: str) -> str:
    return s.strip().strip("'\"` ").strip()
