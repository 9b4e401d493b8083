"""The backend interface: the only thing a runtime implements. Backends run tensors; they hold no session
state. The session owns the cache handle, the position counter and the crop history (DESIGN.md §3).

A backend takes a turn's input one of two ways. An embedding backend (ONNX, the torch reference) implements
`embed_tokens` and `forward`: the loop looks the ids up, pastes the image features over their placeholders and
hands it embeddings. A token backend (llama.cpp) implements `forward_tokens`: it gets the ids and the features
apart and looks its own (possibly quantized) embedding table up. `run_tokens` is the one call the session makes.
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
        """Token embeddings [n, hidden] float32 for int64 ids [n]. (A token backend has `forward_tokens` instead
        of this and `forward`; see run_tokens.)"""
        ...

    def new_cache(self, capacity: int) -> Cache:
        """A cache for up to `capacity` tokens."""
        ...

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: Cache) -> np.ndarray:
        """Append `embeds` [n, hidden] at `positions` [3, n] to the cache; logits [vocab] of the last token."""
        ...


def forward_embedded(backend, ids: np.ndarray, images: list[tuple[int, np.ndarray]], positions: np.ndarray,
                     cache: Cache) -> np.ndarray:
    """`forward_tokens` of an embedding backend: the ids' embeddings with each image's features at its offset."""
    embeds = backend.embed_tokens(ids)
    for offset, feats in images:
        embeds[offset: offset + len(feats)] = feats
    return backend.forward(embeds, positions, cache)


def run_tokens(backend, ids: np.ndarray, images: list[tuple[int, np.ndarray]], positions: np.ndarray,
               cache: Cache) -> np.ndarray:
    """Append `ids` [n] at `positions` [3, n] to the cache, `images` [(offset, features [k, hidden])] standing in
    for the ids at offset..offset+k; the logits [vocab] of the last token. Through the backend's `forward_tokens`
    where it has one, else its embeddings (`forward_embedded`)."""
    own = getattr(backend, "forward_tokens", None)
    if own is not None:
        return own(ids, images, positions, cache)
    return forward_embedded(backend, ids, images, positions, cache)


class RecordingBackend:
    """Wraps a backend and keeps what passes through it, for parity tests, benchmarks and profiling.

    `views` are the views encoded in this session, `calls` each forward call's (embeds, positions, logits), and
    `token_calls` each call's (ids, image offsets). Over a token backend `embeds` is None. A new cache starts a
    new record.
    """

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.hidden_size, self.vocab_size = inner.name, inner.hidden_size, inner.vocab_size
        self.views: list[View] = []
        self.calls: list[tuple[np.ndarray | None, np.ndarray, np.ndarray]] = []
        self.token_calls: list[tuple[np.ndarray, list[int]]] = []

    def forward_tokens(self, ids, images, positions, cache) -> np.ndarray:
        self.token_calls.append((np.asarray(ids).copy(), [o for o, _ in images]))
        if not hasattr(self.inner, "forward_tokens"):
            return forward_embedded(self, ids, images, positions, cache)  # through forward below: recorded
        logits = self.inner.forward_tokens(ids, images, positions, cache)
        self.calls.append((None, positions, logits))
        return logits

    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        self.views += views
        return self.inner.encode_images(views)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.inner.embed_tokens(ids)

    def new_cache(self, capacity: int) -> Cache:
        self.views, self.calls, self.token_calls = [], [], []
        return self.inner.new_cache(capacity)

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: Cache) -> np.ndarray:
        logits = self.inner.forward(embeds, positions, cache)
        self.calls.append((embeds, positions, logits))
        return logits
