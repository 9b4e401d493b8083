"""The card documents of the shipped demo: determinism, ground truth, and the legibility gap the method needs."""

from __future__ import annotations

import numpy as np
import pytest

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.cards import (CardsConfig, READ_QUESTION, make_card_page, make_card_sample, page_reading,
                                    write_cards)
from edge_awares.data.format import read_samples
from edge_awares.errors import ConfigError
from edge_awares.views import Geometry, lowres_view


def test_same_seed_same_pixels_and_record():
    a, b = make_card_sample(7, 3), make_card_sample(7, 3)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.question, a.answers, a.evidence_box, a.crop_ids) == (b.question, b.answers, b.evidence_box, b.crop_ids)
    assert not np.array_equal(np.asarray(a.image), np.asarray(make_card_sample(7, 4).image))


@pytest.mark.parametrize("n_cards", [1, 4])
def test_page_questions_cover_every_card_with_exact_evidence(n_cards):
    page = make_card_page(1, 0, CardsConfig(n_cards=n_cards))
    assert len(page) == 2 * n_cards
    reading = dict((c[0], c[1:4]) for c in page[0].meta["cards"])
    assert page[0].meta["reading"].count(",") == n_cards - 1
    for s in page:
        x0, y0, x1, y1 = s.evidence_box
        q = s.crop_ids[0]
        assert q in reading  # each card is exactly one quadrant crop
        l, t, r, b = AWARES_CROPS.pixel_box(q, 224, 224)
        assert l <= x0 < x1 <= r and t <= y0 < y1 <= b
        colour, letter, code = reading[q]
        assert colour in s.question
        assert s.answers == [code if s.needs_detail else letter]


def test_four_card_page_orders_detail_questions_first():
    page = make_card_page(1, 0, CardsConfig(n_cards=4))
    assert [s.needs_detail for s in page] == [True] * 4 + [False] * 4
    assert sorted(c[0] for c in page[0].meta["cards"]) == ["0", "1", "2", "3"]
    assert READ_QUESTION.endswith(".")


def test_code_ink_sits_inside_its_box():
    s = make_card_sample(2, 5, CardsConfig(detail_share=1.0))
    x0, y0, x1, y1 = s.evidence_box
    ink = np.asarray(s.image.convert("L"), dtype=np.int32) < 80
    assert ink[y0:y1, x0:x1].sum() > 20  # the digits are drawn there ...
    strip = ink[max(0, y0 - 2):y1 + 2, max(0, x0 - 3):x1 + 3]
    assert strip.sum() == ink[y0:y1, x0:x1].sum()  # ... and nowhere just around them


def test_low_res_view_blurs_the_code_but_keeps_the_letter():
    """The code's strokes are 1 px at native; halved, its dark ink mostly turns grey. The big letter stays solid."""
    s = make_card_sample(4, 0, CardsConfig(detail_share=1.0))
    x0, y0, x1, y1 = s.evidence_box
    native = np.asarray(s.image.convert("L"), dtype=np.int32)[y0:y1, x0:x1]
    low = np.asarray(lowres_view(s.image, Geometry(min_pixels=112 * 112)).source.convert("L"), dtype=np.int32)
    low = low[y0 // 2:(y1 + 1) // 2, x0 // 2:(x1 + 1) // 2]
    assert (native < 60).mean() > 2.5 * (low < 60).mean()


def test_page_reading_orders_quadrants():
    s = make_card_sample(0, 0, CardsConfig(n_cards=3))
    assert s.meta["reading"].count(",") == 2
    assert [c[0] for c in s.meta["cards"]] == sorted(c[0] for c in s.meta["cards"])
    assert page_reading([]) == ""


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="size"):
        make_card_sample(0, 0, CardsConfig(size=101))
    with pytest.raises(ConfigError, match="detail_share"):
        CardsConfig(detail_share=2).validate()


def test_write_cards_round_trips(tmp_path):
    path = write_cards(tmp_path / "c", n=5, seed=3)
    samples = read_samples(path)
    assert len(samples) == 5 and all(s.source == "cards" for s in samples)
    assert samples[0].load_image().size == (224, 224)
