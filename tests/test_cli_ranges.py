"""Every numeric option of every command, walked from click itself: a hostile value (negative, nan, inf, huge, not a
number) is refused with one line that names the option, exit 2, before any file is read. New options are covered
without editing this file; a legal value that looks hostile is listed in LEGAL with the reason."""

import atexit
import math
import os
import tempfile

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_awares.cli import cli, main

HOSTILE_INT = ["-1", "-7", str(10**13), "1.5", "nan"]
HOSTILE_FLOAT = ["nan", "inf", "-inf", "-1", "1e300"]
# (command, option, value) that are legal although they look hostile
LEGAL = {
    ("train sft", "--max-steps", "-1"), ("train grpo", "--max-steps", "-1"),  # -1: train by --epochs
}
# Options every run of a command needs besides click's required ones (recipes may supply them).
EXTRA = {"train sft": ["--model", "{x}", "--data", "{x}", "--output", "{x}"],
         "train grpo": ["--model", "{x}", "--data", "{x}", "--output", "{x}"],
         "eval": ["--engine", "{x}"],
         "train demo": ["-o", "{x}"],  # its -o has a default: a run must never land in the working folder
         "serve": ["--engine", "{x}"]}  # else a legal value starts the shipped engine's server, which never returns


def _numeric_options():
    out = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, [*path, name])
            return
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
                out.append((" ".join(path), cmd, p))

    walk(cli, [])
    return out


OPTIONS = _numeric_options()
# Paths below a regular file: nothing can be read or created there, so a run that got past validation stops at
# its first file access instead of doing work.
_FILE = tempfile.NamedTemporaryFile(prefix="edge-awares-not-a-dir-", delete=False).name
atexit.register(os.unlink, _FILE)
NOWHERE = os.path.join(_FILE, "missing")


def _argv(path: str, cmd: click.Command, opt: click.Option, value: str, nowhere: str) -> list[str]:
    argv = path.split()
    for p in cmd.params:
        if isinstance(p, click.Argument):
            argv.append("What is the total?" if p.name == "question" else nowhere)
        elif p.required and p is not opt:
            is_num = isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))
            argv += [p.opts[0], "1" if is_num else nowhere]
    argv += [a.format(x=nowhere) for a in EXTRA.get(path, [])]
    return argv + [opt.opts[0], value]


def test_every_numeric_option_is_walked():
    assert len(OPTIONS) > 60  # ask, export, profile, tiny, data, curate, eval, train *


@pytest.mark.parametrize("path,cmd,opt", OPTIONS, ids=[f"{p}{o.opts[0]}" for p, _, o in OPTIONS])
def test_hostile_numbers_are_refused_naming_the_option(path, cmd, opt, capsys):
    values = HOSTILE_INT if isinstance(opt.type, click.types.IntParamType) else HOSTILE_FLOAT
    nowhere = NOWHERE
    for value in values:
        if (path, opt.opts[0], value) in LEGAL:
            continue
        rc = main(_argv(path, cmd, opt, value, nowhere))
        err = capsys.readouterr().err.strip()
        assert rc == 2, f"{path} {opt.opts[0]} {value}: rc {rc}: {err}"
        assert opt.opts[0] in err or opt.name in err, f"{path} {opt.opts[0]} {value}: the error does not name it: {err}"
        assert "Traceback" not in err


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(OPTIONS), st.one_of(st.integers(min_value=-(10**20), max_value=10**20),
                                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)))
def test_any_value_gives_a_result_or_one_line(option, value):
    """Property: any value of any numeric option ends in exit 0 or a handled error, never an exception. The
    positional paths do not exist, so a value that passes validation stops at the first file."""
    import io
    import contextlib

    path, cmd, opt = option
    text = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    text = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(_argv(path, cmd, opt, text, NOWHERE))
    assert rc in (0, 1, 2, 3), err.getvalue()
