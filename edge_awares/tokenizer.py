"""The text tokenizer of an engine or checkpoint, through `tokenizers` alone (no transformers at run time).

Plain text is always encoded with special-token matching off, so a question that contains `<|im_end|>` or
`<|image_pad|>` stays text; control tokens enter a prompt only by id, from the chat renderer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelLoadError


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the two operations the session needs and special-token lookup."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        # A second handle that never matches special-token text inside plain text.
        self._plain = Tokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self._specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}

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
        """Plain text to ids; special-token text is tokenized as ordinary characters."""
        if not text:
            return []
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def to_str(self) -> str:
        return self._tok.to_str()
