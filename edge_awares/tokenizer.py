"""The text tokenizer of an engine or checkpoint, through `tokenizers` alone (no transformers at run time).

Plain text is always encoded with added-token matching off, so a question that contains `<|im_end|>`,
`<|image_pad|>` or `<tool_call>` stays text; control tokens enter a prompt only by id, from the chat renderer.
Qwen's `<tool_call>` / `</tool_call>` are added tokens *not* marked special, which `encode_special_tokens` alone
does not escape, so the plain handle marks every added token special first.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelLoadError


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the two operations the session needs and special-token lookup."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        # A second handle that never matches added-token text inside plain text: every added token (special or
        # not) is marked special there, and special-token matching is off.
        spec = json.loads(tok.to_str())
        for added in spec.get("added_tokens") or []:
            added["special"] = True
        self._plain = Tokenizer.from_str(json.dumps(spec))
        self._plain.encode_special_tokens = True
        decoder = tok.get_added_tokens_decoder()
        self._specials = {t.content: i for i, t in decoder.items() if t.special}
        self._added_ids = frozenset(decoder)

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{path}: no tokenizer.json (a fast tokenizer file is required)")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ModelLoadError(f"{path}: cannot load tokenizer ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """Id of a special or added token (e.g. '<|im_end|>'); ModelLoadError if the vocabulary lacks it."""
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ModelLoadError(f"tokenizer has no token {token!r}")
        return tid

    def is_special(self, token_id: int) -> bool:
        return token_id in self._specials.values()

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; the text of any added token is tokenized as ordinary characters, so no text can
        produce a control token (PromptError if a tokenizer's own merges would make one anyway)."""
        if not text:
            return []
        ids = self._plain.encode(text, add_special_tokens=False).ids
        if self._added_ids.intersection(ids):
            from .errors import PromptError

            raise PromptError("this tokenizer turns the text into a control token; the text cannot be used as is")
        return ids

    def encode_markup(self, text: str) -> list[int]:
        """Trusted template text (the chat renderer's own strings, a protocol's tool call) to ids, as the
        tokenizer itself would: the text of added tokens in it becomes their ids. Never for user text."""
        if not text:
            return []
        return self._tok.encode(text, add_special_tokens=False).ids

    def added_tokens(self) -> dict[str, int]:
        """Every added token's text and id (special or not)."""
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def to_str(self) -> str:
        return self._tok.to_str()
