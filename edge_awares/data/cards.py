"""Cards: the small synthetic documents the shipped demo policy is trained and evaluated on.

A page is a 2 x 2 grid of coloured cards. Each card carries a big letter (legible in the low-res view) and a
two-digit code in Pillow's built-in 6 x 11 bitmap font (7 px tall at native resolution; halved, the digits
blur into blobs). Two questions per card:

- "Which letter is on the red card?"  (coarse: the low-res view is enough)
- "What is the code on the red card?" (detail: needs the card's crop at native resolution)

Compared with `synth.py` (free layouts, TrueType text at several sizes, charts) the cards are deliberately
simple: a policy of a few million parameters trained from scratch on a 2-core CPU can learn to read them, which
is what the shipped demo needs. The evidence box of every question is exact (ground truth for the oracle), and
each card is exactly one quadrant crop of the AwaRes crop set, so a detail question has one best crop.

    make_card_sample(seed, index) -> Sample        write_cards("out/cards", n=1000, seed=0)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..crops import get_crop_set
from ..errors import ConfigError
from .format import Sample, write_samples
from .synth import BOLD, COLOURS, _font, _ink_size

# Letters whose big glyphs differ in the low-res view (no I/J/L/O/Q/V/W/C/G look-alikes).
LETTERS = "ABDEFHKMNPRSTXYZ"
COLOUR_NAMES = ("red", "green", "blue", "orange", "purple", "pink")
TEMPLATES = {"code": "What is the code on the {colour} card?", "letter": "Which letter is on the {colour} card?"}
# Pretraining only (train/base.py): every card, in reading order, gives a dense reading signal.
READ_QUESTION = "Read the cards."
CODE_INK = (20, 20, 24)
STRIP = (250, 250, 246)


@dataclass(frozen=True)
class CardsConfig:
    """Generator settings; sizes in native pixels. `size` is the page side; each card is a quadrant."""

    size: int = 224
    detail_share: float = 0.5  # share of code (detail) questions
    n_cards: int = 1  # cards per page, in random quadrants (the rest stay blank)
    code_len: int = 2
    letter_px: int = 44  # big letter, bold: ~32 px cap height native, ~16 px low-res
    jitter: int = 0  # px of random offset of the letter and the code strip inside a card (0: a fixed layout,
    # which a from-scratch ~3M model learns to read within the CPU budget; see train/base.py)
    crop_set: str = "awares10"

    def validate(self) -> "CardsConfig":
        checks = [("size", 200 <= self.size <= 2048 and self.size % 2 == 0, "an even number in 200..2048"),
                  ("detail_share", 0.0 <= self.detail_share <= 1.0, "0..1"),
                  ("code_len", 1 <= self.code_len <= 6, "1..6"),
                  ("n_cards", 1 <= self.n_cards <= 4, "1..4"),
                  ("letter_px", 12 <= self.letter_px <= self.size // 3, f"12..{self.size // 3}"),
                  ("jitter", 0 <= self.jitter <= self.size // 16, f"0..{self.size // 16}")]
        for name, ok, legal in checks:
            if not ok:
                raise ConfigError(f"cards: {name}={getattr(self, name)!r} is out of range ({legal})")
        get_crop_set(self.crop_set)
        return self


@lru_cache(maxsize=1)
def _code_font() -> ImageFont.ImageFont:
    # Pillow's embedded bitmap font: crisp 1-px strokes, identical on every machine (no font files needed).
    return ImageFont.load_default_imagefont()


@dataclass(frozen=True)
class Card:
    quadrant: str  # crop id of the quadrant: "0".."3"
    colour: str
    letter: str
    code: str
    letter_box: tuple[int, int, int, int]
    code_box: tuple[int, int, int, int]


def _layout(rng: random.Random, cfg: CardsConfig) -> list[Card]:
    half = cfg.size // 2
    colours = rng.sample(COLOUR_NAMES, 4)
    letters = rng.sample(LETTERS, 4)
    font = _code_font()
    big = _font(cfg.letter_px, BOLD)
    cards = []
    present = set(rng.sample(range(4), cfg.n_cards))
    for q in range(4):
        if q not in present:
            continue
        x0, y0 = (q % 2) * half, (q // 2) * half
        code = "".join(rng.choice("0123456789") for _ in range(cfg.code_len))
        # The letter's ink box, centred in the upper two thirds of the card, jittered.
        l, t, r, b = _ink_size(letters[q], big)
        lw, lh = r - l, b - t
        lx = x0 + (half - lw) // 2 + rng.randint(-cfg.jitter, cfg.jitter)
        ly = y0 + (half * 2 // 3 - lh) // 2 + rng.randint(-cfg.jitter // 2, cfg.jitter // 2) + 4
        cl, ct, cr, cb = font.getbbox(code)
        cx = x0 + (half - (cr - cl)) // 2 + rng.randint(-cfg.jitter, cfg.jitter)
        cy = y0 + half * 3 // 4 + rng.randint(-cfg.jitter // 2, cfg.jitter // 2)
        cards.append(Card(str(q), colours[q], letters[q], code, (lx, ly, lx + lw, ly + lh),
                          (cx + cl, cy + ct, cx + cr, cy + cb)))
    return cards


def _render(cards: list[Card], cfg: CardsConfig) -> Image.Image:
    half = cfg.size // 2
    im = Image.new("RGB", (cfg.size, cfg.size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    big = _font(cfg.letter_px, BOLD)
    for c in cards:
        q = int(c.quadrant)
        x0, y0 = (q % 2) * half, (q // 2) * half
        d.rectangle((x0 + 3, y0 + 3, x0 + half - 4, y0 + half - 4), fill=COLOURS[c.colour])
        l, t, _, _ = _ink_size(c.letter, big)
        d.text((c.letter_box[0] - l, c.letter_box[1] - t), c.letter, font=big, fill=(255, 255, 255))
        bl, bt, br, bb = c.code_box
        d.rectangle((bl - 4, bt - 3, br + 3, bb + 2), fill=STRIP)
        cl, ct, _, _ = _code_font().getbbox(c.code)
        d.text((bl - cl, bt - ct), c.code, font=_code_font(), fill=CODE_INK)
    return im


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"cards:{seed}:{index}")


def card_questions(card: Card) -> list[tuple[str, str, str, tuple[int, int, int, int], bool]]:
    """(template, question, answer, evidence box, needs detail) for one card."""
    return [("code", TEMPLATES["code"].format(colour=card.colour), card.code, card.code_box, True),
            ("letter", TEMPLATES["letter"].format(colour=card.colour), card.letter, card.letter_box, False)]


def page_reading(cards: list[Card]) -> str:
    """The answer to READ_QUESTION: "colour letter code" per card, top left to bottom right."""
    return ", ".join(f"{c.colour} {c.letter} {c.code}" for c in sorted(cards, key=lambda c: c.quadrant))


def _sample(sid, image, card: Card, question, answer, box, detail, template, cfg, cards) -> Sample:
    return Sample(id=sid, image=image, question=question, answers=[answer], evidence_box=tuple(box),
                  needs_detail=detail, crop_ids=get_crop_set(cfg.crop_set).covering(box, cfg.size, cfg.size)[:1],
                  source="cards", meta={"template": template, "width": cfg.size, "height": cfg.size,
                                        "colour": card.colour, "reading": page_reading(cards),
                                        "cards": [[c.quadrant, c.colour, c.letter, c.code, list(c.code_box)]
                                                  for c in cards]})


def make_card_sample(seed: int, index: int, cfg: CardsConfig | None = None) -> Sample:
    """Sample `index` of stream `seed`: one page, one question about one card (same arguments, same pixels)."""
    cfg = (cfg or CardsConfig()).validate()
    rng = _rng(seed, index)
    cards = _layout(rng, cfg)
    card = rng.choice(cards)
    detail = rng.random() < cfg.detail_share
    template, question, answer, box, _ = card_questions(card)[0 if detail else 1]
    return _sample(f"cards-{seed}-{index:06d}", _render(cards, cfg), card, question, answer, box, detail,
                   template, cfg, cards)


def make_card_page(seed: int, index: int, cfg: CardsConfig | None = None) -> list[Sample]:
    """All eight questions of page `index` (code questions first), sharing one in-memory image."""
    cfg = (cfg or CardsConfig()).validate()
    cards = _layout(_rng(seed, index), cfg)
    image = _render(cards, cfg)
    out = []
    for detail in (True, False):
        for card in cards:
            for template, question, answer, box, d in card_questions(card):
                if d == detail:
                    out.append(_sample(f"cards-{seed}-{index:06d}-q{len(out)}", image, card, question, answer,
                                       box, d, template, cfg, cards))
    return out


def iter_card_samples(n: int, seed: int = 0, cfg: CardsConfig | None = None, start: int = 0):
    cfg = (cfg or CardsConfig()).validate()
    for index in range(start, start + n):
        yield make_card_sample(seed, index, cfg)


def write_cards(out_dir, n: int, seed: int = 0, cfg: CardsConfig | None = None, force: bool = False) -> Path:
    """Write `n` card samples to `out_dir`/samples.jsonl and PNGs to `out_dir`/images/, built aside and renamed into
    place; the folder must be new, empty or (with `force`) a dataset of ours (OutputError otherwise)."""
    from ..outputs import building

    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    cfg = (cfg or CardsConfig()).validate()
    with building(out_dir, "dataset", force=force) as tmp:
        write_samples(tmp / "samples.jsonl", iter_card_samples(n, seed, cfg), image_dir="images")
    return Path(out_dir) / "samples.jsonl"


__all__ = ["CardsConfig", "Card", "make_card_sample", "make_card_page", "iter_card_samples", "write_cards",
           "card_questions", "page_reading", "LETTERS", "TEMPLATES", "READ_QUESTION"]
