"""The engine runtime's memory budget: refused before allocating, with one line; vision calls split by image and long
prefills split into chunks give the same tokens and logits as one call; the planned peak covers what was held."""

import numpy as np
import pytest

from edge_awares.api import DEMO_ENGINE, AskConfig, ask, open_session
from edge_awares.cli import main
from edge_awares.errors import ConfigError, MemoryBudgetError
from edge_awares.session import Sampler

from _engine_fixtures import *  # noqa: F401,F403  (tiny_engine)
from conftest import make_doc

pytestmark = pytest.mark.skipif(not (DEMO_ENGINE / "manifest.json").is_file(), reason="no shipped demo engine")
Q = "What is the code on the blue card?"


def _run(monkeypatch, engine, **consts):
    import edge_awares.runtimes.onnx as onnx_rt

    for name, value in consts.items():
        monkeypatch.setattr(onnx_rt, name, value)
    s = open_session(engine=engine)
    calls = []
    inner = s.backend.forward

    def forward(e, p, c):
        out = inner(e, p, c)
        calls.append(out)
        return out

    s.backend.forward = forward
    r = s.run(make_doc(900, 700), Q, crops="0,4,all", sampler=Sampler())
    return r, calls, s.backend


def test_split_vision_calls_and_chunked_prefill_change_nothing(monkeypatch, tiny_engine):
    """fp32: the same tokens and logits. (A dynamic-int8 engine quantizes activations per call, so any change of
    call sizes moves its numerics as a different batch would; the export gate bounds int8 against the reference.)"""
    whole, whole_logits, _ = _run(monkeypatch, tiny_engine)
    monkeypatch.undo()
    split, split_logits, _ = _run(monkeypatch, tiny_engine, VISION_CHUNK_BYTES=0, PREFILL_CHUNK=7)
    assert split.ids.tolist() == whole.ids.tolist() and split.answer == whole.answer
    assert len(split_logits) == len(whole_logits)
    for a, b in zip(whole_logits, split_logits):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_vision_calls_group_views_under_the_chunk_cap(monkeypatch):
    import edge_awares.runtimes.onnx as onnx_rt
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.views import Geometry, crop_views

    s = open_session(engine=DEMO_ENGINE)
    views = crop_views(make_doc(900, 700), AWARES_CROPS, ["0", "1", "2", "3"], s.geometry)
    assert len(s.backend._vision_chunks(views)) == 1  # small views share one call
    monkeypatch.setattr(onnx_rt, "VISION_CHUNK_BYTES", 0)
    chunks = s.backend._vision_chunks(views)
    assert [len(c) for c, _ in chunks] == [1, 1, 1, 1]
    assert [layout.tokens for _, layout in chunks] == [[v.n_tokens] for v in views]
    assert isinstance(s.geometry, Geometry)


def test_over_budget_is_refused_before_allocating(monkeypatch, capsys):
    monkeypatch.setenv("EDGE_AWARES_MEMORY_BUDGET", "0.01")
    with pytest.raises(MemoryBudgetError, match="over the budget of 0.01 GiB"):
        open_session(engine=DEMO_ENGINE)
    monkeypatch.delenv("EDGE_AWARES_MEMORY_BUDGET")
    rc = main(["ask", str(DEMO_ENGINE.parent.parent.parent / "examples" / "cards_a.png"), Q, "--memory-budget", "0.02"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "budget" in err and len(err.splitlines()) == 1


def test_memory_budget_flag_is_range_checked_and_engine_only():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--memory-budget"):
            AskConfig(image="x.png", question="q", memory_budget=bad).validate()
    with pytest.raises(ConfigError, match="torch reference"):
        open_session(model="/nonexistent", memory_budget=4.0)


def test_the_plan_covers_what_the_process_held(tmp_path):
    """The planned peak (resident memory before each step plus the step's own allocation) is at least the
    process's resident memory after the run: a plan that undercounts would let a device run out."""
    from edge_awares.runtimes.onnx import process_rss

    img = tmp_path / "page.png"
    make_doc(1400, 1000).save(img)
    r = ask(AskConfig(image=str(img), question=Q, engine=str(DEMO_ENGINE), crops="all"))
    if process_rss() == 0:
        pytest.skip("this platform does not report resident memory")
    assert r.memory["planned_peak"] >= r.memory["weights"] + r.memory["kv_cache"] + r.memory["vision_peak"]
    assert r.memory["planned_peak"] <= r.memory["budget"]
