"""Legal ranges of numeric settings, and the one checker every config's `validate()` runs first.

A config declares `RANGES = {"lr": Range(0, 10, lo_open=True), ...}` over its fields; `check_ranges(cfg, RANGES)`
raises ConfigError naming the flag, the value and the legal range for a value of the wrong type, a bool where a
number belongs, nan or inf, or a value outside the range. Checked before any file is read or written, so a bad
flag is reported as itself, not as whatever the run would have hit later. Shared ranges (seeds, threads) live
here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False  # lo itself is not legal (a learning rate > 0)
    hi_open: bool = False  # hi itself is not legal (a dropout < 1)
    also: tuple = ()  # other legal values outside the range (-1 = "no limit")
    optional: bool = False  # None is legal (unset)

    def legal(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        text = f"{left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}" + (" integer" if self.integer else "")
        extra = [repr(v) for v in self.also] + (["unset"] if self.optional else [])
        return text + (" or " + " or ".join(extra) if extra else "")

    def check(self, flag: str, value) -> None:
        if value is None:
            if self.optional:
                return
            raise ConfigError(f"{flag} must be set; legal: {self.legal()}")
        if value in self.also and not isinstance(value, bool):
            return
        number = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            raise ConfigError(f"{flag} {value!r} is not {'an integer' if self.integer else 'a number'}; "
                              f"legal: {self.legal()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag} {value!r} is not a finite number; legal: {self.legal()}")
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        high_ok = value < self.hi if self.hi_open else value <= self.hi
        if not (low_ok and high_ok):
            raise ConfigError(f"{flag} {value!r} is out of range; legal: {self.legal()}")


def _fmt(x: float) -> str:
    if isinstance(x, int) and abs(x) >= 1 << 16 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return repr(x)


# The legal range of each generation limit: flags, export options, curate/eval settings and an engine manifest's
# stored limits (edge_awares/manifest.py) are all checked against this one table.
LIMITS = {"max_new_tokens": (1, 1 << 16), "max_crop_turns": (0, 16), "max_context": (64, 1 << 20)}


def limit_range(name: str, optional: bool = False) -> "Range":
    """The Range of generation limit `name` (a key of LIMITS)."""
    lo, hi = LIMITS[name]
    return Range(lo, hi, integer=True, optional=optional)


# Shared ranges: one definition each.
SEED = Range(0, 2**32 - 1, integer=True)
THREADS = Range(1, 1024, integer=True, optional=True)
STEPS = Range(1, 10**9, integer=True)
COUNT = Range(0, 10**9, integer=True)
FRACTION = Range(0.0, 1.0)
BELOW_ONE = Range(0.0, 1.0, hi_open=True)
LEARNING_RATE = Range(0.0, 10.0, lo_open=True)
TEMPERATURE = Range(0.0, 100.0)  # 0 = greedy
MAX_RTR = Range(0.0, 64.0, lo_open=True)  # a budget on the retained-token ratio (ask --max-rtr, serve max_rtr)
BATCH = Range(1, 1 << 16, integer=True)
MEMORY_BUDGET_GB = Range(0.0, 1 << 20, lo_open=True, optional=True)  # None: the runtime's default


def backend_option(f):
    """The `--backend NAME` flag of the commands that run an engine (ask, profile, eval)."""
    import click

    from .manifest import BACKENDS

    return click.option("--backend", "backend", type=click.Choice(BACKENDS), default=None,
                        help="Which of the engine folder's backends runs it (default: its only one, else "
                             f"{BACKENDS[0]}).")(f)


def memory_budget_option(f):
    """The `--memory-budget GiB` flag of the commands that run an engine (ask, profile, eval)."""
    import click

    return click.option("--memory-budget", "memory_budget", type=float, default=None,
                        help="GiB the engine runtime may plan for (default: EDGE_AWARES_MEMORY_BUDGET, else 7, "
                             "which fits an 8 GB device); a request over it is refused before it allocates.")(f)


def check_ranges(cfg, ranges: dict[str, Range], flag_prefix: str = "--") -> None:
    """ConfigError for the first field of `cfg` outside its Range (flags named --field-name)."""
    for name, rng in ranges.items():
        rng.check(flag_prefix + name.replace("_", "-"), getattr(cfg, name))


def check_threads(value, source: str = "--threads") -> int | None:
    """`value` (an int, None, or the text of an environment variable) as a legal thread count; ConfigError else."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text, 10)
        except ValueError:
            raise ConfigError(f"{source} {text!r} is not an integer; legal: {THREADS.legal()}") from None
    THREADS.check(source, value)
    return value
