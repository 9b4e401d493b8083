"""Synthetic documents: determinism, legibility of small vs large text, crop coverage, config validation."""

import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.format import read_samples
from edge_awares.data.synth import (
    DETAIL_TEMPLATES,
    LOWRES_TEMPLATES,
    SynthConfig,
    legibility,
    make_page,
    make_sample,
    text_heights,
    write_dataset,
)
from edge_awares.errors import ConfigError

N = 300  # enough for every crop id to be the best one several times (about 20 each)


@pytest.fixture(scope="module")
def samples():
    cfg = SynthConfig()
    return [make_sample(7, i, cfg) for i in range(N)]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_bytes_and_records():
    for i in range(5):
        a, b = make_sample(3, i), make_sample(3, i)
        assert _png(a.image) == _png(b.image)
        a.image = b.image = "x.png"
        assert a.to_json() == b.to_json()
    assert _png(make_sample(3, 0).image) != _png(make_sample(4, 0).image)
    assert _png(make_sample(3, 0).image) != _png(make_sample(3, 1).image)


def test_write_dataset_is_deterministic(tmp_path):
    def digest(root):
        jsonl = write_dataset(root, n=6, seed=11)
        h = hashlib.sha256(jsonl.read_bytes())
        for f in sorted((root / "images").iterdir()):
            h.update(f.read_bytes())
        return h.hexdigest(), jsonl

    (d1, jsonl), (d2, _) = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert d1 == d2
    back = read_samples(jsonl)
    assert len(back) == 6 and all(Image.open(s.image).size == (448, 448) for s in back)
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["image"].startswith("images/") and first["source"] == "synth"


def test_legibility_small_text_fades_large_text_stays():
    leg = legibility()
    small, label, title = leg["small"], leg["label"], leg["title"]
    assert small["native_px"] >= 8  # readable at native resolution
    assert small["lowres_px"] <= 4  # a few px after halving: no longer a glyph
    assert small["lowres_darkest"] > 40  # and its ink is washed out to grey
    assert label["lowres_px"] >= 6 and title["lowres_px"] >= 9  # big structure survives the low-res view
    assert label["lowres_darkest"] < 40 and title["lowres_darkest"] < 40


def test_text_heights_measures_what_it_draws():
    assert text_heights(40)["native_px"] > text_heights(20)["native_px"] > text_heights(10)["native_px"]


def test_evidence_inside_image_and_crop_ids_consistent(samples):
    for s in samples:
        x0, y0, x1, y1 = s.evidence_box
        assert 0 <= x0 < x1 <= 448 and 0 <= y0 < y1 <= 448
        assert s.crop_ids == AWARES_CROPS.covering(s.evidence_box, 448, 448)[:1]
        assert s.answers and all(a.strip() for a in s.answers)
        assert s.needs_detail == (s.meta["template"] in DETAIL_TEMPLATES)


def test_every_crop_is_best_for_some_question(samples):
    best = Counter(s.crop_ids[0] for s in samples)
    assert set(AWARES_CROPS.ids) <= set(best), best
    detail_best = Counter(s.crop_ids[0] for s in samples if s.needs_detail)
    assert {str(i) for i in range(9)} <= set(detail_best), detail_best


def test_question_mix(samples):
    share = sum(s.needs_detail for s in samples) / len(samples)
    assert 0.5 < share < 0.7  # detail_share 0.6
    templates = Counter(s.meta["template"] for s in samples)
    assert set(DETAIL_TEMPLATES) | set(LOWRES_TEMPLATES) == set(templates), templates
    # A small answer vocabulary: codes, 2-digit numbers, colours, counts, letters, title words.
    assert all(len(a) <= 8 for s in samples for a in s.answers)


def test_detail_answer_text_is_where_the_evidence_box_says(samples):
    # The evidence box holds dark ink (the value) on a light background, at native resolution.
    s = next(s for s in samples if s.meta["template"] == "panel_code")
    darkest, lightest = s.image.convert("L").crop(s.evidence_box).getextrema()
    assert darkest < 90 and lightest > 180


def test_wide_images_and_detail_share_extremes():
    cfg = SynthConfig(width=672, height=448, detail_share=1.0)
    s = make_sample(0, 0, cfg)
    assert s.image.size == (672, 448) and s.needs_detail
    assert s.evidence_box[2] <= 672
    assert not make_sample(0, 0, SynthConfig(detail_share=0.0)).needs_detail


@pytest.mark.parametrize("bad", [dict(width=10), dict(detail_share=1.5), dict(max_panels=0), dict(code_len=1),
                                 dict(crop_set="nope")])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="legal|known"):
        make_sample(0, 0, SynthConfig(**bad))


def test_make_page_lists_every_question_of_the_page():
    page = make_page(2024, 1)
    single = make_sample(2024, 1)
    assert _png(page[0].image) == _png(single.image)  # the same page as make_sample draws
    assert (single.question, single.answers) in [(s.question, s.answers) for s in page]
    assert len({s.id for s in page}) == len(page) and len({s.question for s in page}) == len(page)
    assert [s.needs_detail for s in page] == sorted((s.needs_detail for s in page), reverse=True)


def test_examples_folder_is_current():
    root = Path(__file__).resolve().parents[1] / "examples"
    samples = read_samples(root / "questions.jsonl")
    images = sorted({s.image for s in samples})
    assert len(images) == 3
    for path in images:
        assert Path(path).stat().st_size < 60_000
        assert Path(path).suffix == ".png"
    # Regenerating gives the same questions (the pages are deterministic).
    first = [s for s in samples if s.image == images[0]]
    name = Path(images[0]).name
    spec = {"page_448_a.png": (2024, 1, SynthConfig()), "page_448_b.png": (2024, 31, SynthConfig()),
            "page_672x448.png": (2024, 7, SynthConfig(width=672, height=448))}[name]
    fresh = make_page(*spec)
    assert [(s.question, s.answers, s.evidence_box) for s in first] == \
           [(s.question, s.answers, s.evidence_box) for s in fresh]


def test_values_lose_their_ink_in_the_low_res_view(samples):
    # On real pages: the darkest pixel of a value's box is near-black at native resolution, but a washed-out
    # grey in the low-res view (half size, LANCZOS), while the big title keeps its ink.
    native, low, title = [], [], []
    for s in samples[:150]:
        grey = s.image.convert("L")
        half = grey.resize((grey.width // 2, grey.height // 2), Image.LANCZOS)
        x0, y0, x1, y1 = s.evidence_box
        low_box = half.crop((x0 // 2, y0 // 2, (x1 + 1) // 2, (y1 + 1) // 2)).getextrema()[0]
        if s.needs_detail:
            native.append(grey.crop(s.evidence_box).getextrema()[0])
            low.append(low_box)
        elif s.meta["template"] == "title":
            title.append(low_box)
    assert max(native) <= 70 and sum(low) / len(low) >= 90 and min(low) > max(native)
    assert title and max(title) <= 30


def test_deterministic_across_processes():
    # Python's hash randomization must not leak into layouts (no iteration over sets or dicts of str).
    code = ("import hashlib; from edge_awares.data.synth import make_sample; "
            "print(hashlib.sha256(b''.join(make_sample(1, i).image.tobytes() for i in range(4))).hexdigest())")
    root = str(Path(__file__).resolve().parents[1])
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                          env={**os.environ, "PYTHONHASHSEED": seed,
                               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}).stdout
           for seed in ("1", "2")}
    assert len(out) == 1
