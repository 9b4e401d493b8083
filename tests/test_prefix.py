"""The prefix cache across questions (edge_awares/prefix.py) on the shipped engine: a second question on the same
image prefills only its new text and answers exactly as a fresh session does; another image reuses the system
prompt alone; a crop fetched again skips the vision tower; the LRU stays within its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_awares.api import demo_engine, open_session
from edge_awares.images import load_image
from edge_awares.prefix import PrefixCache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

if demo_engine() is None:
    pytest.skip("this checkout has no shipped demo engine", allow_module_level=True)


@pytest.fixture(scope="module")
def sessions():
    fresh = open_session(engine=str(demo_engine()))
    cached = open_session(engine=str(demo_engine()))
    cached.prefix_cache = PrefixCache()
    return fresh, cached


def _same(a, b):
    assert a.answer == b.answer and a.crops == b.crops
    assert np.array_equal(a.ids, b.ids) and [t.generated_ids for t in a.turns] == [t.generated_ids for t in b.turns]


def test_a_second_question_on_the_same_image_prefills_only_its_text(sessions):
    fresh, cached = sessions
    cached.prefix_cache.clear()
    page = load_image(str(EXAMPLES / "cards_b.png"))
    q1, q2 = "What is the code on the green card?", "Which letter is on the green card?"
    first = cached.run(page, q1)
    assert first.turns[0].reused_tokens == 0
    second = cached.run(page, q2)
    t = second.turns[0]
    question_tokens = len(cached.tok.encode(q2))
    assert t.reused_tokens > 0 and t.prefill_tokens <= question_tokens + 8  # the question and the turn's markup
    assert t.reused_tokens + t.prefill_tokens == first.turns[0].reused_tokens + first.turns[0].prefill_tokens \
        - len(cached.tok.encode(q1)) + question_tokens
    for q in (q1, q2):  # and the answers are a fresh session's, token for token
        _same(cached.run(page, q), fresh.run(page, q))


def test_another_image_reuses_the_system_prompt_only(sessions):
    fresh, cached = sessions
    cached.prefix_cache.clear()
    a, b = load_image(str(EXAMPLES / "cards_a.png")), load_image(str(EXAMPLES / "cards_b.png"))
    cached.run(a, "Which letter is on the orange card?")
    r = cached.run(b, "Which letter is on the green card?")
    t = r.turns[0]
    assert 0 < t.reused_tokens < t.reused_tokens + t.prefill_tokens
    assert t.prefill_tokens >= r.turns[0].visual_tokens  # the new image is prefilled
    _same(r, fresh.run(b, "Which letter is on the green card?"))


def test_crops_fetched_again_skip_the_vision_tower(sessions):
    _, cached = sessions
    pc = cached.prefix_cache
    pc.clear()
    page = load_image(str(EXAMPLES / "cards_b.png"))
    r1 = cached.run(page, "What is the code on the green card?")
    assert r1.crops  # the policy fetches the card's quadrant
    before = dict(pc.counts)
    r2 = cached.run(page, "What is the code on the green card?")
    assert r2.crops == r1.crops and r2.answer == r1.answer
    # the low-res view lies inside the restored prefix (not even looked up); the crop's features are reused
    assert pc.counts["feature_hits"] - before["feature_hits"] == len(r2.crops)
    assert pc.counts["feature_misses"] == before["feature_misses"]
    assert r2.turns[0].reused_tokens == r2.turns[0].reused_tokens + r2.turns[0].prefill_tokens - 1
    stats = pc.stats()
    assert stats["kv_entries"] >= 1 and 0 < stats["bytes"] <= stats["budget_bytes"] and stats["hit_rate"] > 0


def test_the_lru_keeps_within_its_budget():
    session = open_session(engine=str(demo_engine()))
    pc = PrefixCache(budget_bytes=2_000_000)
    session.prefix_cache = pc
    for name in ("cards_a.png", "cards_b.png"):
        for colour in ("orange", "green", "red"):
            session.run(load_image(str(EXAMPLES / name)), f"Which letter is on the {colour} card?")
            assert pc.stats()["bytes"] <= 2_000_000
    assert pc.counts["evictions"] > 0
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_a_follow_up_sees_the_earlier_turn_and_prefills_only_the_new_text(sessions):
    """history: the first question (with the image) and its answer, then the follow-up; the prefix cache finds the
    first request's prompt, so the follow-up prefills the earlier answer and the new question only."""
    fresh, cached = sessions
    cached.prefix_cache.clear()
    page = load_image(str(EXAMPLES / "cards_b.png"))
    q1, q2 = "Which letter is on the green card?", "What is the code on the green card?"
    first = cached.run(page, q1)
    follow = cached.run(page, q2, history=[(q1, first.answer)])
    t = follow.turns[0]
    first_prompt = first.turns[0].reused_tokens + first.turns[0].prefill_tokens
    assert t.reused_tokens == first_prompt  # all of the first prompt
    assert t.prefill_tokens <= len(cached.tok.encode(first.answer)) + len(cached.tok.encode(q2)) + 16  # + markup
    _same(follow, fresh.run(page, q2, history=[(q1, first.answer)]))
    # the follow-up's prompt holds the first exchange: one image, two user turns
    prompt = follow.ids[: t.reused_tokens + t.prefill_tokens].tolist()
    text = cached.tok.decode(prompt)
    assert text.count(q1) == 1 and text.count(q2) == 1 and prompt.count(cached.tok.token_id("<|vision_start|>")) == 1
