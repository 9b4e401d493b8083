"""The runtime's memory budget, shared by every engine backend: how much a process may plan for, how many threads it
runs, and the check each backend makes before it allocates (weights, KV cache, a step's working set)."""

from __future__ import annotations

import os

from edge_awares.errors import MemoryBudgetError

GiB = 1 << 30

# A budget that fits an 8 GB device (Jetson Orin Nano shares 8 GB between CPU and GPU; the OS keeps ~1 GB).
DEFAULT_MEMORY_BUDGET_GB = 7.0


def process_rss() -> int:
    """This process's resident memory now (bytes; 0 where the platform does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def memory_budget() -> int:
    """Bytes the runtime may plan for: EDGE_AWARES_MEMORY_BUDGET (GiB) or DEFAULT_MEMORY_BUDGET_GB."""
    raw = os.environ.get("EDGE_AWARES_MEMORY_BUDGET")
    if raw is None:
        return int(DEFAULT_MEMORY_BUDGET_GB * GiB)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1 << 20:
        from edge_awares.errors import ConfigError

        raise ConfigError(f"EDGE_AWARES_MEMORY_BUDGET must be a positive number of GiB, not {raw!r}")
    return int(value * GiB)


def engine_threads() -> int | None:
    """Intra-op threads from EDGE_AWARES_THREADS (unset: onnxruntime's default, one per physical core)."""
    v = os.environ.get("EDGE_AWARES_THREADS")
    if not v:
        return None
    from edge_awares.ranges import check_threads

    return check_threads(v, "EDGE_AWARES_THREADS")


class BudgetedBackend:
    """The budget check and memory report of a backend. The backend sets `budget` (bytes), keeps `_kv_held`,
    `_vision_peak`, `_planned_peak` and `_loaded` (1 once its weights are in memory) and defines
    `weights_bytes()`."""

    budget: int
    _kv_held = _vision_peak = _planned_peak = _loaded = _reserved = 0

    def weights_bytes(self) -> int:
        raise NotImplementedError

    def _check_budget(self, what: str, extra: int) -> None:
        """MemoryBudgetError unless what the process holds now (its resident memory, engine and KV cache included
        once loaded; at least the engine's size) plus `extra`, the step's own allocation, fits the budget."""
        held = max(process_rss(), self.weights_bytes() * self._loaded + self._kv_held) + self._reserved
        need = held + extra
        if need > self.budget:
            raise MemoryBudgetError(
                f"{what} needs ~{extra / GiB:.2f} GiB beside the {held / GiB:.2f} GiB this process holds (engine "
                f"{self.weights_bytes() / GiB:.2f} GiB, KV cache {self._kv_held / GiB:.2f} GiB): {need / GiB:.2f} GiB "
                f"is over the budget of {self.budget / GiB:.2f} GiB (--memory-budget or EDGE_AWARES_MEMORY_BUDGET, "
                "in GiB, raises it)")
        self._planned_peak = max(self._planned_peak, need)

    def reserve(self, what: str, nbytes: int) -> None:
        """Count `nbytes` a caller will hold beside the backend (the server's prefix cache) against the budget from
        now on: MemoryBudgetError, before anything is allocated, when it does not fit."""
        self._check_budget(what, int(nbytes))
        self._reserved += int(nbytes)

    def memory(self) -> dict:
        """The budget, what this backend holds against it, and the largest total it planned for (bytes)."""
        return {"budget": self.budget, "weights": self.weights_bytes(), "kv_cache": self._kv_held,
                "reserved": self._reserved, "vision_peak": self._vision_peak, "planned_peak": self._planned_peak}
