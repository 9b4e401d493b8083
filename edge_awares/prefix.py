"""A prefix cache across questions: a second question on the same image (or a follow-up in the same conversation)
reuses the KV of the system prompt and the image, and the vision features of views already encoded, so it
prefills only the new text.

Keys are the turn's tokens as the session lays them out, with every image span standing for its view's content
digest (the pixels the vision tower sees, their grid): two requests share a prefix exactly when they share those
tokens and images. Entries hold a snapshot of the KV cache after a first turn's prompt; the longest common
prefix among them is restored (never splitting an image) and the rest prefilled. Vision features are kept by view
digest, so a crop fetched again skips the vision tower too. Everything lives in one LRU bounded by `budget_bytes`,
stated when the cache is made and reported by `stats()`.

It works on any backend whose cache can `snapshot(n)` and `restore(snapshot, n)` (the ONNX engine on the CPU
provider, the torch reference); `Session` skips it elsewhere and says so in `stats()["enabled"]`. Hand-written:
no library keys a KV cache by mixed token/image content for an engine-agnostic session loop.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DEFAULT_BUDGET_BYTES = 256 << 20


def view_digest(view) -> str:
    """The content key of a view: its patches (what the vision tower reads) and their grid."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(view.grid_thw)).encode())
    h.update(np.ascontiguousarray(view.pixel_values()).tobytes())
    return h.hexdigest()


def signature(enc) -> tuple:
    """The prefix key of an encoded run of pieces: token ids, each image span one item (digest, tokens)."""
    out: list = []
    cursor = 0
    ids = enc.ids.tolist()
    for offset, view in enc.images:
        out += ids[cursor:offset]
        out.append(("image", view_digest(view), view.n_tokens))
        cursor = offset + view.n_tokens
    out += ids[cursor:]
    return tuple(out)


def token_length(sig: tuple, items: int) -> int:
    """Tokens covered by the first `items` items of a signature."""
    return sum(x[2] if isinstance(x, tuple) else 1 for x in sig[:items])


@dataclass
class _Entry:
    sig: tuple
    snapshot: object
    nbytes: int


class PrefixCache:
    """An LRU of KV snapshots (by prompt signature) and vision features (by view digest), within one budget."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.budget = int(budget_bytes)
        self._lru: OrderedDict = OrderedDict()  # key -> (kind, value, nbytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self.enabled = True
        self.counts = {"lookups": 0, "hits": 0, "image_hits": 0, "reused_tokens": 0, "prefilled_tokens": 0, "feature_hits": 0,
                       "feature_misses": 0, "evictions": 0}

    # -- KV prefixes
    def lookup(self, sig: tuple) -> tuple[int, object | None]:
        """(items of `sig` the best entry shares, its snapshot); (0, None) when none shares anything. The shared
        run always ends before the last item (the turn must prefill at least one token to get logits)."""
        best, best_n = None, 0
        with self._lock:
            self.counts["lookups"] += 1
            for key, (kind, entry, _) in self._lru.items():
                if kind != "kv":
                    continue
                n = _common(entry.sig, sig)
                if n > best_n:
                    best, best_n = key, n
            best_n = min(best_n, len(sig) - 1)
            if best is None or best_n <= 0:
                return 0, None
            self._lru.move_to_end(best)
            self.counts["hits"] += 1
            if any(isinstance(x, tuple) for x in sig[:best_n]):
                self.counts["image_hits"] += 1  # the restored prefix holds an image, not just the system prompt
            return best_n, self._lru[best][1].snapshot

    def store(self, sig: tuple, snapshot, nbytes: int) -> None:
        self._put(("kv", sig), "kv", _Entry(sig, snapshot, nbytes), nbytes)

    def account(self, reused: int, prefilled: int) -> None:
        with self._lock:
            self.counts["reused_tokens"] += reused
            self.counts["prefilled_tokens"] += prefilled

    # -- vision features
    def features(self, digest: str):
        with self._lock:
            hit = self._lru.get(("vision", digest))
            if hit is None:
                self.counts["feature_misses"] += 1
                return None
            self._lru.move_to_end(("vision", digest))
            self.counts["feature_hits"] += 1
            return hit[1]

    def store_features(self, digest: str, feats: np.ndarray) -> None:
        self._put(("vision", digest), "vision", feats, int(feats.nbytes))

    # -- the LRU
    def _put(self, key, kind: str, value, nbytes: int) -> None:
        with self._lock:
            if nbytes > self.budget:
                return  # larger than the whole budget: never kept
            if key in self._lru:
                self._bytes -= self._lru.pop(key)[2]
            self._lru[key] = (kind, value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.budget:
                _, (_, _, freed) = self._lru.popitem(last=False)
                self._bytes -= freed
                self.counts["evictions"] += 1

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self._bytes = 0

    def stats(self) -> dict:
        with self._lock:
            kinds = [k for k, _, _ in self._lru.values()]
            c = dict(self.counts)
            return {"enabled": self.enabled, "budget_bytes": self.budget, "bytes": self._bytes,
                    "kv_entries": kinds.count("kv"), "feature_entries": kinds.count("vision"),
                    # hit_rate: lookups that restored an image's KV (the system prompt alone is the prefix_hit_rate)
                    "hit_rate": c["image_hits"] / c["lookups"] if c["lookups"] else None,
                    "prefix_hit_rate": c["hits"] / c["lookups"] if c["lookups"] else None, **c}


def _common(a: tuple, b: tuple) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


__all__ = ["PrefixCache", "signature", "view_digest", "token_length", "DEFAULT_BUDGET_BYTES"]
