"""Session logic on a scripted numpy backend: request -> crop turn on the same cache, masks, policies,
fallbacks, RTR bookkeeping, and errors. No model and no torch needed."""

import numpy as np
import pytest

from edge_awares.crops import AWARES_CROPS
from edge_awares.errors import ConfigError, CropError, PromptError
from edge_awares.protocols import get_protocol
from edge_awares.session import Sampler, Session, SessionConfig
from edge_awares.tiny import make_tokenizer
from edge_awares.tokenizer import TextTokenizer
from edge_awares.views import Geometry

from conftest import make_doc
from fakes import ScriptedBackend

G = Geometry(max_pixels=512 * 28 * 28)


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(make_tokenizer())


def _session(tok, scripts, protocol="tool_call", **cfg):
    be = ScriptedBackend(tok, scripts)
    return be, Session(be, tok, get_protocol(protocol), AWARES_CROPS, G, SessionConfig(**cfg))


REQ = {"tool_call": '<tool_call>\n{"name": "crop", "arguments": {"regions": ["3"]}}\n</tool_call>',
       "awares": "GET_CROPS: ['3']", "ergo": "<zoom>[100, 100, 200, 200]</zoom>"}


@pytest.mark.parametrize("protocol", ["tool_call", "awares", "ergo"])
def test_request_then_answer_on_same_cache(tok, protocol):
    answer = "<answer>42.7</answer>" if protocol == "ergo" else "42.7"
    be, s = _session(tok, [REQ[protocol], answer], protocol)
    img = make_doc(640, 480)
    r = s.run(img, "What is the total?")
    assert r.answer == "42.7" and r.requested and r.parse_failures == 0
    assert len(r.turns) == 2 and r.turns[1].kind == "crop"
    assert r.crops == (["3"] if protocol != "ergo" else ["box"])
    # turn 2 prefilled only its own tokens: the cache holds every token but the final stop token
    assert be.cache.length == len(r.ids) - 1
    assert r.turns[0].prefill_tokens + len(r.turns[0].generated_ids) - 1 + r.turns[1].prefill_tokens \
        + len(r.turns[1].generated_ids) == len(r.ids)
    assert sum(n for n, _ in be.forward_calls if n > 1) == r.turns[0].prefill_tokens + r.turns[1].prefill_tokens
    # mask: 1 exactly on sampled tokens
    sampled = sum(len(t.generated_ids) for t in r.turns)
    assert int(r.mask.sum()) == sampled
    # one batched vision call per turn
    assert be.image_calls == [1, 1]
    # positions of every forward call continue without gaps or overlaps in the text runs
    assert r.visual_tokens == r.turns[0].visual_tokens + r.turns[1].visual_tokens
    assert r.rtr == pytest.approx(r.visual_tokens / r.native_visual_tokens)


def test_answer_from_lowres_only(tok):
    be, s = _session(tok, ["blue"])
    r = s.run(make_doc(640, 480), "What colour?")
    assert r.answer == "blue" and not r.requested and r.crops == [] and len(r.turns) == 1
    assert r.rtr == pytest.approx(r.turns[0].visual_tokens / r.native_visual_tokens)
    assert 0.2 < r.rtr < 0.3 and 0.2 < r.pixel_ratio < 0.3


def test_forced_crops_are_mask_zero(tok):
    be, s = _session(tok, ["unused", "42.7"])
    r = s.run(make_doc(640, 480), "Total?", crops="0,4")
    assert r.crops == ["0", "4"] and r.answer == "42.7"
    assert r.turns[0].parsed == "forced" and r.turns[0].generated_ids == []
    assert int(r.mask.sum()) == len(r.turns[1].generated_ids)
    assert be.image_calls == [1, 2]  # turn 2: both crops in one batched call
    req_ids = tok.encode_markup(REQ["tool_call"].replace('["3"]', '["0", "4"]'))
    start = r.turns[0].prefill_tokens
    assert r.ids[start:start + len(req_ids)].tolist() == req_ids


def test_policy_all_and_none(tok):
    _, s = _session(tok, ["x", "ans"])
    r = s.run(make_doc(640, 480), "q", crops="all")
    assert r.crops == ["all"] and r.rtr > 1.0
    _, s = _session(tok, [REQ["tool_call"], "never"])
    r = s.run(make_doc(640, 480), "q", crops="none")
    assert r.requested and r.crops == [] and r.answer == "" and len(r.turns) == 1


def test_unparseable_request_falls_back_to_whole_image(tok):
    _, s = _session(tok, ["<tool_call>{broken", "ans"])
    r = s.run(make_doc(640, 480), "q")
    assert r.parse_failures == 1 and r.crops == ["all"] and r.answer == "ans"


def test_crop_turn_cap(tok):
    _, s = _session(tok, [REQ["tool_call"], REQ["tool_call"], "final"], max_crop_turns=2)
    r = s.run(make_doc(640, 480), "q")
    assert len(r.turns) == 3 and r.crops == ["3", "3"] and r.answer == "final"
    _, s = _session(tok, [REQ["tool_call"], REQ["tool_call"]], max_crop_turns=1)
    r = s.run(make_doc(640, 480), "q")
    assert len(r.turns) == 2 and r.answer == ""  # still asking when turns ran out: no answer


def test_max_new_tokens_closes_message(tok):
    be, s = _session(tok, ["a long answer that will be cut", "x"], max_new_tokens=3)
    r = s.run(make_doc(640, 480), "q")
    assert len(r.turns[0].generated_ids) == 3 and r.answer


def test_errors(tok):
    _, s = _session(tok, ["x"], max_context=128)
    with pytest.raises(PromptError, match="too long"):
        s.run(make_doc(640, 480), "q")
    _, s = _session(tok, ["x"])
    with pytest.raises(PromptError, match="empty"):
        s.run(make_doc(640, 480), "   ")
    with pytest.raises(CropError, match="legal"):
        s.run(make_doc(640, 480), "q", crops="0,12")
    with pytest.raises(ConfigError):
        s.run(make_doc(640, 480), "q", crops="")


def test_sampler():
    logits = np.array([0.0, 5.0, 1.0])
    assert Sampler()(logits) == 1
    draws = [Sampler(temperature=1.0, seed=3)(logits) for _ in range(3)]
    assert draws == [Sampler(temperature=1.0, seed=3)(logits)] * 3
    s = Sampler(temperature=5.0, top_p=0.5, seed=0)
    assert {s(logits) for _ in range(50)} == {1}


def test_native_single_pass(tok):
    _, s = _session(tok, [REQ["tool_call"], "never"])
    r = s.run(make_doc(640, 480), "q", view="native")
    assert r.rtr == pytest.approx(1.0) and len(r.turns) == 1 and r.crops == []
    with pytest.raises(ConfigError, match="lowres, native"):
        s.run(make_doc(640, 480), "q", view="full")


def test_plain_protocol_never_requests(tok):
    be = ScriptedBackend(tok, ["GET_CROPS: ['3']"])
    s = Session(be, tok, get_protocol("plain"), AWARES_CROPS, G)
    r = s.run(make_doc(640, 480), "q")
    assert not r.requested and r.answer == "GET_CROPS: ['3']"


def test_max_rtr_serves_requested_crops_in_order_while_they_fit():
    """The budget counts the first view; crops the model named are served in its order until the next does not
    fit; a request none of whose crops fits stays unserved (no answer)."""
    from edge_awares.errors import ConfigError

    tok = TextTokenizer(make_tokenizer())
    call = '<tool_call>{"name": "crop", "arguments": {"regions": ["3", "0", "4"]}}</tool_call>'

    def run(max_rtr):
        s = Session(ScriptedBackend(tok, [call, "ans"]), tok, get_protocol("tool_call"), AWARES_CROPS, Geometry())
        return s.run(make_doc(448, 448), "q", max_rtr=max_rtr)

    free = run(None)
    assert free.crops == ["3", "0", "4"] and free.budget_dropped == [] and free.rtr == pytest.approx(1.0)
    half = run(0.75)  # low-res 0.25 + two quadrants 0.25 each: the centre crop (0.25) no longer fits
    assert half.crops == ["3", "0"] and half.budget_dropped == ["4"] and half.rtr <= 0.75 and half.answer == "ans"
    tight = run(0.3)  # no crop fits beside the low-res view
    assert tight.crops == [] and tight.budget_dropped == ["3", "0", "4"] and tight.answer == ""
    assert tight.to_dict()["max_rtr"] == 0.3
    with pytest.raises(ConfigError, match="max_rtr"):
        run(0)
