"""The bad-sample policy shared by `eval` and `curate`: what a run does with a sample it cannot use.

A bad sample is a malformed row (invalid JSON at line N, a missing question or answer), an image that is refused
(outside the data folder, not a regular file, too large) or unreadable, or a prompt that does not fit. `skip`
(the default) records it with its ``file:line`` and reason and goes on; `stop` ends the run at the first one.
After the outputs are written, a run that skipped any exits with BAD_SAMPLES_EXIT unless bad samples are allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import BadSamplesError, ConfigError

ON_BAD_SAMPLE = ("skip", "stop")
BAD_SAMPLES_EXIT = BadSamplesError.exit_code  # 3: the run finished, but some samples were bad


@dataclass(frozen=True)
class BadSample:
    """One sample a run could not use: where it is (``file:line``, ``file[row n]``), why, and its id if known."""

    where: str
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class BadSamples:
    """The bad samples of one run under a policy: `skip` records each and goes on, `stop` raises at the first.

    `allow` only changes the verdict at the end (check): with it, a run that skipped samples still succeeds.
    Raises ConfigError for an unknown policy.
    """

    def __init__(self, on_bad: str = "skip", allow: bool = False):
        check_policy(on_bad)
        self.on_bad, self.allow = on_bad, allow
        self.items: list[BadSample] = []

    def add(self, where: str | None, reason: str, id: str | None = None) -> None:
        """Record one bad sample; with `stop`, raise BadSamplesError naming it (one line)."""
        item = BadSample(one_line(where or "<unknown location>"), one_line(reason), id)
        self.items.append(item)
        if self.on_bad == "stop":
            raise BadSamplesError(f"{item} (stopped at the first bad sample: --on-bad-sample stop)")

    def __len__(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict:
        """The JSON form the reports carry: {"count": n, "samples": [{"where", "reason", "id"}, ...]}."""
        return {"count": len(self.items), "samples": [asdict(b) for b in self.items]}


# Control characters come from the data (a path or a column name holding a newline or an escape sequence):
# escaped, so every report line and error stays one line and cannot drive the terminal.
_CONTROL = ({c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)]} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
            | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b, ...): safe to print as one line."""
    return str(text).translate(_CONTROL)


def check_policy(on_bad: str) -> None:
    """Raise ConfigError listing the legal values if `on_bad` is not one of them."""
    if on_bad not in ON_BAD_SAMPLE:
        raise ConfigError(f"--on-bad-sample {on_bad!r} is not one of {', '.join(ON_BAD_SAMPLE)}")


def raise_if_bad(summary: dict, allow: bool, total: int | None = None) -> None:
    """Called once the outputs are complete: raise BadSamplesError (exit BAD_SAMPLES_EXIT) when the run's
    `summary` (BadSamples.to_dict) lists any bad sample and `allow` is false."""
    n = summary.get("count", 0)
    if not n or allow:
        return
    first = summary["samples"][0]
    of = f" of {total}" if total is not None else ""
    raise BadSamplesError(f"{n}{of} samples were bad and skipped (first: {first['where']}: {first['reason']}); "
                          "the report lists them all; --allow-bad-samples exits 0 anyway")


def bad_sample_options(f):
    """The click options every command that reads sample files shares: --image-root, --on-bad-sample,
    --allow-bad-samples (the function receives image_roots, on_bad_sample, allow_bad_samples)."""
    import click

    opts = [
        click.option("--image-root", "image_roots", multiple=True, type=click.Path(file_okay=False),
                     help="A folder sample images may also lie in (repeatable). By default an image path in the "
                          "data must resolve, symlinks followed, inside the data file's folder."),
        click.option("--on-bad-sample", "on_bad_sample", type=click.Choice(ON_BAD_SAMPLE), default="skip",
                     show_default=True,
                     help="A malformed row, a refused or unreadable image, a prompt that does not fit: skip it "
                          "(listed with file:line in the report) or stop the run at the first one."),
        click.option("--allow-bad-samples", is_flag=True,
                     help=f"Exit 0 even if samples were skipped (otherwise the exit code is {BAD_SAMPLES_EXIT})."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
