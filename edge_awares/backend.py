"""The backend interface: the only thing a runtime implements. Backends run tensors; they hold no session
state. The session owns the cache handle, the position counter and the crop history (DESIGN.md §3).
"""

from __future__ import annotations

from typing import Protocol as _Protocol, runtime_checkable

import numpy as np

from .views import View


@runtime_checkable
class Cache(_Protocol):
    """A KV cache allocated once per session. `length` is tokens held; `rewind(n)` drops all after n."""

    @property
    def length(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    def rewind(self, n: int) -> None: ...


@runtime_checkable
class Backend(_Protocol):
    """Runs one model's tensors: vision encoder, token embeddings, and the decoder over a cache."""

    name: str
    hidden_size: int
    vocab_size: int

    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        """Visual embeddings [n_tokens_i, hidden] for each view, computed in one batched call."""
        ...

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings [n, hidden] float32 for int64 ids [n]."""
        ...

    def new_cache(self, capacity: int) -> Cache:
        """A cache for up to `capacity` tokens."""
        ...

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: Cache) -> np.ndarray:
        """Append `embeds` [n, hidden] at `positions` [3, n] to the cache; logits [vocab] of the last token."""
        ...


class RecordingBackend:
    """Wraps a backend and keeps what passes through it, for parity tests, benchmarks and profiling.

    `views` are the views encoded in this session, `calls` each forward call's (embeds, positions, logits).
    A new cache starts a new record.
    """

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.hidden_size, self.vocab_size = inner.name, inner.hidden_size, inner.vocab_size
        self.views: list[View] = []
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        self.views += views
        return self.inner.encode_images(views)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.inner.embed_tokens(ids)

    def new_cache(self, capacity: int) -> Cache:
        self.views, self.calls = [], []
        return self.inner.new_cache(capacity)

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: Cache) -> np.ndarray:
        logits = self.inner.forward(embeds, positions, cache)
        self.calls.append((embeds, positions, logits))
        return logits
