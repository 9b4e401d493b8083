"""Base-model pretraining (train/base.py): a few steps on CPU, the token layout equal to the runtime's."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from edge_awares.train.base import BaseRunConfig, train_base

    out = tmp_path_factory.mktemp("base") / "b"
    cfg = BaseRunConfig(output=str(out), steps=4, batch_size=2, warmup=1, eval_every=4, eval_n=2, threads=1)
    return train_base(cfg, log=lambda m: None)


def test_writes_a_loadable_checkpoint_with_its_record(base_run):
    from edge_awares.models import read_checkpoint
    from edge_awares.tokenizer import TextTokenizer

    info = read_checkpoint(base_run)
    rec = json.loads((base_run / "base_run.json").read_text())
    assert len(rec["loss"]) == 4 and all(np.isfinite(rec["loss"]))
    assert rec["evals"] and {"native/accuracy", "lowres/accuracy", "native/code"} <= set(rec["evals"][-1])
    assert 2.5e6 < rec["parameters"] < 4e6
    tok = TextTokenizer.from_file(info.path)
    # The tokenizer was trained on the task's text: a card question is a handful of tokens, digits one each.
    assert len(tok.encode("What is the code on the orange card?")) <= 12
    assert len(tok.encode("0621")) == 4


def test_examples_use_the_sessions_token_layout(base_run):
    """The prompt part of a training example is exactly what Session feeds the model for that view."""
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.cards import make_card_sample
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.session import Session
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.train.base import Encoder

    info = read_checkpoint(base_run)
    enc = Encoder(base_run)
    session = Session(TorchBackend(base_run), TextTokenizer.from_file(info.path), get_protocol("plain"),
                      AWARES_CROPS, info.geometry)
    s = make_card_sample(5, 0)
    for view in ("native", "lowres"):
        ex = enc.example(s.image, s.question, s.answers[0], view)
        r = session.run(s.image, s.question, crops="none", view=view, max_new_tokens=1)
        n_prompt = ex["labels"].index(next(v for v in ex["labels"] if v != -100))
        assert ex["ids"][:n_prompt] == r.ids[:n_prompt].tolist()
        assert int((r.mask == 0).sum()) == n_prompt  # the session's prompt is exactly that long
        assert ex["labels"][n_prompt:] == ex["ids"][n_prompt:]
        assert ex["ids"][-1] == enc.im_end
    batch = enc.batch([enc.example(s.image, s.question, s.answers[0], "native"),
                       enc.example(s.image, "Read the cards.", s.meta["reading"], "lowres")])
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 16 * 16 + 8 * 8


def test_bad_settings_are_config_errors(tmp_path):
    from edge_awares.errors import ConfigError
    from edge_awares.train.base import BaseRunConfig

    with pytest.raises(ConfigError):
        BaseRunConfig(output=str(tmp_path), native_share=1.5).validate()
    with pytest.raises(ConfigError):
        BaseRunConfig(output=str(tmp_path), steps=0).validate()


def test_token_attributes_place_each_digit_in_its_token():
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.cards import CardsConfig, LETTERS, make_card_sample
    from edge_awares.train.base import token_attributes

    s = make_card_sample(3, 1, CardsConfig(n_cards=2))
    cards = s.meta["cards"]
    page = token_attributes(cards, (8, 8), (224, 224), None, legible=True)
    assert page.shape == (64, 3)
    digits = page[:, 2].reshape(8, 8)
    for q, _, letter, code, (x0, y0, x1, y1), *_ in cards:
        for k, d in enumerate(code):  # the token under each glyph's centre holds that digit
            cx, cy = x0 + (k + 0.5) * (x1 - x0) / len(code), (y0 + y1) / 2
            assert digits[int(cy // 28), int(cx // 28)] == int(d)
        qr, qc = divmod(int(q), 2)
        block = page[:, 1].reshape(8, 8)[qr * 4:qr * 4 + 4, qc * 4:qc * 4 + 4]
        assert (block == LETTERS.index(letter)).all()
    assert (page[:, 0] == -100).sum() == 32  # the two blank quadrants train nothing
    q, _, letter, code, *_ = cards[0]
    crop = token_attributes(cards, (4, 4), (224, 224), AWARES_CROPS.pixel_box(q, 224, 224), legible=True)
    assert sorted(int(v) for v in crop[:, 2] if v != 10) == sorted(int(d) for d in code)
    low = token_attributes(cards, (4, 4), (224, 224), None, legible=False)
    assert (low[:, 2] == -100).all() and (low[:, 1] != -100).sum() == 8


def test_training_forward_equals_the_session(base_run):
    """The training batch's forward (transformers computing M-RoPE positions) gives the session's logits: a
    batch without mm_token_type_ids would silently train on 1-D positions (measured: ~40% logit error)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.cards import make_card_sample
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.session import Session
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.train.base import Encoder

    info = read_checkpoint(base_run)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(base_run)).eval()
    session = Session(TorchBackend(model=model), TextTokenizer.from_file(info.path), get_protocol("plain"),
                      AWARES_CROPS, info.geometry)
    enc = Encoder(base_run)
    s = make_card_sample(9, 2)
    for view in ("native", "lowres"):
        seen = []
        session.run(s.image, s.question, crops="none", view=view, max_new_tokens=1,
                    sampler=lambda logits: seen.append(np.asarray(logits)) or 0)
        ex = enc.example(s.image, s.question, "7", view)
        batch = enc.batch([ex, enc.example(s.image, "Read the cards.", s.meta["reading"], "native")])
        with torch.no_grad():
            logits = model(**batch).logits[0].numpy()
        k = ex["labels"].index(next(v for v in ex["labels"] if v != -100))
        ref = logits[k - 1]
        assert np.abs(seen[0] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_eval_every_zero_means_no_evaluation():
    """--eval-every 0 turns the evaluations off (the loop reads it so); a negative count is refused."""
    from edge_awares.errors import ConfigError
    from edge_awares.train.base import BaseRunConfig

    assert BaseRunConfig(output="unused", eval_every=0).validate().eval_every == 0
    with pytest.raises(ConfigError, match="--eval-every"):
        BaseRunConfig(output="unused", eval_every=-1).validate()


def test_token_attributes_on_a_second_demo_page():
    """A spanning card's colour fills its half; a large code's digits are targets even in the low-res view."""
    from edge_awares.data.cards import DEMO2, make_card_page
    from edge_awares.train.base import token_attributes

    page = next(p for p in (make_card_page(5, i, DEMO2) for i in range(200))
                if any(c[0] in "5678" for c in p[0].meta["cards"]) and any(c[6] for c in p[0].meta["cards"]))
    cards = page[0].meta["cards"]
    span = next(c for c in cards if c[0] in "5678")
    colours = token_attributes(cards, (8, 8), (224, 224), None, legible=True)[:, 0].reshape(8, 8)
    x0, y0, x1, y1 = (v // 28 for v in span[5])
    block = colours[y0:y1, x0:x1]
    assert block.size == 32 and len(set(block.ravel().tolist())) == 1 and block[0, 0] != -100
    low = token_attributes(cards, (4, 4), (224, 224), None, legible=False)[:, 2]
    large_digits = sorted(int(d) for c in cards if c[6] for d in c[3])
    small_only = all(not c[6] for c in cards)
    assert not small_only
    got = sorted(int(v) for v in low if v != -100)
    assert set(got) <= set(large_digits) and got  # only large codes' digits, in the 4x4 low-res grid


def test_look_targets_are_the_colour_word_and_the_named_cards_tokens(base_run):
    """look_loss's targets: at the positions that predict the answer, the question's colour word (hop 1) and the
    image tokens of the card of that colour (hop 2); full mass on them costs 0, uniform attention -log(share)."""
    import torch

    from edge_awares.data.cards import COLOUR_NAMES, DEMO2, make_card_sample
    from edge_awares.train.base import Encoder, look_loss

    enc = Encoder(base_run)
    s = make_card_sample(4, 2, DEMO2)
    ex = enc.example(s.image, s.question, s.answers[0], "native", cards=s.meta["cards"], look=s.meta["colour"])
    rows, card, word = ex["look"]
    first_answer = ex["labels"].index(next(v for v in ex["labels"] if v != -100))
    assert rows == list(range(first_answer - 1, len(ex["ids"]) - 1))
    assert enc.tok.decode([ex["ids"][i] for i in word]).strip() == s.meta["colour"]
    image = [i for i, t in enumerate(ex["ids"]) if t == enc.image_pad]
    assert set(card) < set(image) and card  # some of the image tokens: the named card's
    colour = COLOUR_NAMES.index(s.meta["colour"])
    assert all(ex["aux"][i - image[0], 0] == colour for i in card)
    assert sum(ex["aux"][:, 0] == colour) == len(card)
    plain = enc.example(s.image, s.question, s.answers[0], "native", cards=s.meta["cards"])
    assert "look" not in enc.batch([plain, plain])
    target = enc.batch([ex, plain])["look"]
    n = len(ex["ids"])
    assert target.shape == (2, 2, n, n) and not target[:, 1].any()
    # Two layers of attention probabilities (head 0 supervised): exactly on target, then uniform over the prefix.
    exact = target.float()[:, :, None]  # [layers, B, heads, n, n]
    exact = exact / exact.sum(-1, keepdim=True).clamp_min(1)
    assert look_loss(list(exact), target).tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    att = [uniform.expand(2, 1, n, n)] * 2
    r = rows[0]
    got = look_loss(att, target)
    assert float(got[0]) == pytest.approx(float(np.mean([-np.log(len(word) / (q + 1)) for q in rows])), rel=1e-4)
    assert float(got[1]) == pytest.approx(float(np.mean([-np.log(len(card) / (q + 1)) for q in rows])), rel=1e-4)
    assert r > max(card)


def test_small_codes_are_never_taught_at_low_res_when_told():
    """lowres_small_codes off: an answer holding a small code is shown at native resolution; letters and large
    codes keep their low-res draw (the v2 base model's rule; v1's recipe keeps every draw)."""
    from edge_awares.data.cards import DEMO2, make_card_sample
    from edge_awares.train.base import BaseRunConfig, shown_view

    off = BaseRunConfig(output="unused", lowres_small_codes=False)
    on = BaseRunConfig(output="unused")
    samples = [make_card_sample(7, i, DEMO2) for i in range(60)]
    for s in samples:
        small_q = s.meta["template"] == "code" and not s.meta["large_code"]
        assert s.needs_detail == small_q
        for kind in ("page", "card"):
            assert shown_view("lowres", kind, s, off) == ("native" if small_q else "lowres")
            assert shown_view("lowres", kind, s, on) == "lowres"
        any_small = any(not c[6] for c in s.meta["cards"])
        assert shown_view("lowres", "read", s, off) == ("native" if any_small else "lowres")
        assert shown_view("native", "page", s, off) == "native"
    kinds = {(s.meta["template"], s.meta["large_code"]) for s in samples}
    assert {("code", True), ("code", False), ("letter", False)} <= kinds


def test_grid_cells_and_card_slots():
    """PositionHeads' targets: each token's row and column cell of a 4 x 4 grid, row-major as the prompt holds the
    tokens; WHERE_QUESTION's answer: the named card's slot, the crop id covering that card."""
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.cards import DEMO2, card_slot, make_card_sample
    from edge_awares.train.base import grid_cells

    cells = grid_cells((8, 8))
    assert cells.shape == (64, 2)
    assert cells[:8, 0].tolist() == [0] * 8 and cells[:8, 1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cells[63].tolist() == [3, 3] and cells[8 * 2 + 5].tolist() == [1, 2]
    assert grid_cells((6, 10))[-1].tolist() == [3, 3]
    seen = set()
    for i in range(80):
        s = make_card_sample(11, i, DEMO2)
        slot = card_slot(s)
        seen.add(slot)
        row = next(r for r in s.meta["cards"] if r[1] == s.meta["colour"])
        x0, y0, x1, y1 = row[5]
        assert AWARES_CROPS.covering((x0 + 4, y0 + 4, x1 - 4, y1 - 4), 224, 224)[0] == slot
    assert {"0", "1", "2", "3"} <= seen and seen & {"5", "6", "7", "8"}
    with pytest.raises(KeyError):
        card_slot(s, "no such colour")


def test_grounding_and_position_losses_train(tmp_path):
    """where_share and pos_weight: "Where is the {colour} card?" examples (answer: the slot) and the position loss
    on the language model's image tokens run, are recorded, and the saved checkpoint stays a plain Qwen2.5-VL."""
    from edge_awares.data.cards import DEMO2
    from edge_awares.errors import ConfigError
    from edge_awares.models import read_checkpoint
    from edge_awares.train.base import BaseRunConfig, train_base

    from dataclasses import asdict

    cfg = BaseRunConfig(output=str(tmp_path / "b"), steps=3, batch_size=4, warmup=1, eval_every=3, eval_n=2,
                        threads=1, card_steps=0, where_share=0.5, pos_weight=1.0, look_weight=1.0,
                        cards=asdict(DEMO2))
    out = train_base(cfg, log=lambda m: None)
    rec = json.loads((out / "base_run.json").read_text())
    assert len(rec["pos_loss"]) == 3 and all(0 < v < 2 * np.log(4) + 1 for v in rec["pos_loss"])
    assert "where/accuracy" in rec["evals"][-1]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        names = list(f.keys())
    assert names and not any("pos." in n or "aux." in n or ".row." in n for n in names)
    assert read_checkpoint(out).path == out
    with pytest.raises(ConfigError):
        BaseRunConfig(output="x", read_share=0.5, card_share=0.3, where_share=0.3).validate()
    with pytest.raises(ConfigError):
        train_base(BaseRunConfig(output=str(tmp_path / "c"), steps=1, pos_weight=1.0, pos_layer=9, threads=1))
