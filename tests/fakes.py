"""A scripted numpy backend: writes given texts turn by turn, so session logic is tested without a model
(and without torch). Logits put all mass on the next scripted token."""

from __future__ import annotations

import numpy as np


class CountingCache:
    def __init__(self, capacity: int):
        self._capacity, self._length = capacity, 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._capacity

    def rewind(self, n: int) -> None:
        self._length = min(self._length, n)


class ScriptedBackend:
    name = "scripted"
    hidden_size = 8

    def __init__(self, tokenizer, scripts: list[str], stop: str = "<|im_end|>"):
        self.vocab_size = tokenizer.vocab_size
        self.scripts = [tokenizer.encode_markup(s) + [tokenizer.token_id(stop)] for s in scripts]
        self.turn = -1
        self.step = 0
        self.image_calls: list[int] = []  # views per encode_images call
        self.forward_calls: list[tuple[int, np.ndarray]] = []  # (n tokens, positions)
        self.cache = None

    def encode_images(self, views):
        self.image_calls.append(len(views))
        return [np.zeros((v.n_tokens, self.hidden_size), np.float32) for v in views]

    def embed_tokens(self, ids):
        return np.zeros((len(ids), self.hidden_size), np.float32)

    def new_cache(self, capacity):
        self.cache = CountingCache(capacity)
        self.turn, self.step = -1, 0
        return self.cache

    def forward(self, embeds, positions, cache):
        assert embeds.shape[0] == positions.shape[1]
        self.forward_calls.append((embeds.shape[0], positions.copy()))
        cache._length += embeds.shape[0]
        if embeds.shape[0] > 1 or self.turn < 0:  # a prefill starts a new turn
            self.turn += 1
            self.step = 0
        script = self.scripts[min(self.turn, len(self.scripts) - 1)]
        tok = script[min(self.step, len(script) - 1)]
        self.step += 1
        logits = np.zeros(self.vocab_size, np.float32)
        logits[tok] = 10.0
        return logits


def import_blocker(*roots: str) -> str:
    """Python source that makes the top-level packages `roots` unimportable, for fresh-interpreter tests."""
    return (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {roots!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
