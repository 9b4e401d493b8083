"""Chat rendering to token ids: the one place where a conversation becomes a prompt.

Renders ChatML exactly as the Qwen3-VL chat template that TRL trains with (`trl/chat_templates/qwen3_vl.jinja`;
for conversations without tools this equals Qwen2.5-VL's own template), but as a list of pieces (plain text,
control tokens, images) instead of one string. Written by hand rather than with jinja because a string
template cannot keep a question's `<|im_end|>` text apart from a real control token, and because the session
needs each message's tokens separately to extend a KV cache turn by turn. tests/test_chat.py holds the ids
equal to transformers' `apply_chat_template` + tokenizer on the same conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .tokenizer import TextTokenizer
from .views import View

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


class Markup(str):
    """Trusted template text: the renderer's own strings, a protocol's system prompt and tool calls. The text of
    an added token inside it (`<tool_call>`) becomes that token, as the chat template renders it. Every other
    string piece is content (a question, a data answer) and is escaped: no content can produce a control token."""


@dataclass(frozen=True)
class Special:
    """A control token, rendered by id."""

    token: str


@dataclass
class Message:
    """One chat message. `content` items are plain strings or Views (images)."""

    role: str  # "system", "user", "assistant" or "tool"
    content: list = field(default_factory=list)


def tool_block(tools: list[dict]) -> str:
    """The tools section appended to the system prompt (Hermes/Qwen convention, as TRL renders it)."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + lines
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>"
    )


def check_content(text: str, control_texts, where: str) -> None:
    """DataError if content `text` (a question or answer in training data) holds the text of a control token.
    The runtime escapes such text (Markup), but TRL renders training conversations with the chat template, which
    would turn it into the real token: such a sample would train on a conversation the runtime never shows."""
    from .errors import DataError

    for token in control_texts:
        if token in text:
            raise DataError(f"{where}: the text holds the control token {token!r}; remove it from the data")


def system_pieces(system: str | None, tools: list[dict] | None) -> list:
    if tools:
        text = (system + "\n\n" if system else "") + tool_block(tools)
    elif system is None:
        return []
    else:
        text = system
    return [Special(IM_START), Markup("system\n" + text), Special(IM_END), Markup("\n")]


def message_pieces(msg: Message, prev_role: str | None = None, next_role: str | None = None) -> list:
    """Pieces of one non-system message. Consecutive tool messages share one user block, as in the template."""
    out: list = []
    if msg.role == "tool":
        if prev_role != "tool":
            out += [Special(IM_START), Markup("user")]
        out.append(Markup("\n<tool_response>\n"))
        out += list(msg.content)
        out.append(Markup("\n</tool_response>"))
        if next_role != "tool":
            out += [Special(IM_END), Markup("\n")]
        return out
    out += [Special(IM_START), Markup(msg.role + "\n")]
    out += list(msg.content)
    out += [Special(IM_END), Markup("\n")]
    return out


def generation_prompt() -> list:
    return [Special(IM_START), Markup("assistant\n")]


def conversation_pieces(system: str | None, tools: list[dict] | None, messages: list[Message],
                        add_generation_prompt: bool = True) -> list:
    pieces = system_pieces(system, tools)
    for i, m in enumerate(messages):
        prev = messages[i - 1].role if i else None
        nxt = messages[i + 1].role if i + 1 < len(messages) else None
        pieces += message_pieces(m, prev, nxt)
    if add_generation_prompt:
        pieces += generation_prompt()
    return pieces


@dataclass
class Encoded:
    """Token ids of a run of pieces, with where each image's pad tokens start."""

    ids: np.ndarray  # int64 [n]
    images: list[tuple[int, View]]  # (offset of the first <|image_pad|>, view)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def encode(pieces: list, tok: TextTokenizer) -> Encoded:
    """Pieces to ids. Adjacent text pieces are joined first, so tokenization matches a whole-string encode;
    added-token text becomes a token only inside Markup pieces (see Markup)."""
    ids: list[int] = []
    images: list[tuple[int, View]] = []
    buf: list[str] = []

    def flush():
        if buf:
            ids.extend(_encode_text(buf, tok))
            buf.clear()

    for p in pieces:
        if isinstance(p, str):
            buf.append(p)
        elif isinstance(p, Special):
            flush()
            ids.append(tok.token_id(p.token))
        elif isinstance(p, View):
            flush()
            ids.append(tok.token_id(VISION_START))
            images.append((len(ids), p))
            ids.extend([tok.token_id(IMAGE_PAD)] * p.n_tokens)
            ids.append(tok.token_id(VISION_END))
        else:
            raise TypeError(f"cannot render piece of type {type(p).__name__}")
    flush()
    return Encoded(np.asarray(ids, dtype=np.int64), images)


def _encode_text(parts: list[str], tok: TextTokenizer) -> list[int]:
    """Joined text parts to ids: the tokenizer splits at added tokens before its model runs, so splitting the
    joined string at the added tokens that lie wholly inside Markup parts, and encoding the rest as plain text,
    is the tokenizer's own result on trusted text and escapes content."""
    import re

    text = "".join(parts)
    if all(isinstance(p, Markup) for p in parts):
        return tok.encode_markup(text)
    if not any(isinstance(p, Markup) for p in parts):
        return tok.encode(text)
    added = tok.added_tokens()
    trusted, pos = [], 0
    for p in parts:
        if isinstance(p, Markup):
            trusted.append((pos, pos + len(p)))
        pos += len(p)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    ids, start = [], 0
    for m in pattern.finditer(text):
        if any(a <= m.start() and m.end() <= b for a, b in trusted):
            ids += tok.encode(text[start:m.start()]) + [added[m.group()]]
            start = m.end()
    return ids + tok.encode(text[start:])
