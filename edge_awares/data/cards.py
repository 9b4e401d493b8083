"""Cards: the small synthetic documents the shipped demo policy is trained and evaluated on.

A page is a 2 x 2 grid of coloured cards. Each card carries a big letter (legible in the low-res view) and a
two-digit code in Pillow's built-in 6 x 11 bitmap font (7 px tall at native resolution; halved, the digits
blur into blobs). Two questions per card:

- "Which letter is on the red card?"  (coarse: the low-res view is enough)
- "What is the code on the red card?" (detail: needs the card's crop at native resolution)

The defaults are the first demo's pages (one card per page). `DEMO2` is the second demo's task, where both of the
policy's decisions depend on the image: 2 to 4 cards per page (the question's colour picks the card, so *where*
to look must be read off the page), codes printed small (bitmap, native only) or large (bold TrueType, legible in
the low-res view; so *whether* to look depends on the card), and on some pages one card spans a half of the page
with its code across a quadrant border, so that the centre or a half is the smallest crop holding the evidence.

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
# Pretraining only: grounding. The answer is the named card's slot, a crop id of the crop set (a quadrant "0".."3", or
# the half "5".."8" a spanning card covers), the same token the policy later writes in its crop request.
WHERE_QUESTION = "Where is the {colour} card?"
CODE_INK = (20, 20, 24)
STRIP = (250, 250, 246)


@dataclass(frozen=True)
class CardsConfig:
    """Generator settings; sizes in native pixels. `size` is the page side; each card is a quadrant."""

    size: int = 224
    detail_share: float = 0.5  # share of code questions (a code question needs detail unless its code is large)
    n_cards: int = 1  # cards per page, in random quadrants (the rest stay blank)
    code_len: int = 2
    letter_px: int = 44  # big letter, bold: ~32 px cap height native, ~16 px low-res
    jitter: int = 0  # px of random offset of the letter and the code strip inside a card (0: a fixed layout,
    # which a from-scratch ~3M model learns to read within the CPU budget; see train/base.py)
    crop_set: str = "awares10"
    # The second demo's page mix (all off by default, which draws exactly the first demo's pages):
    max_cards: int = 0  # > 0: the number of cards is uniform in n_cards..max_cards
    span_share: float = 0.0  # share of pages (of at most 3 cards) where one card covers a half of the page
    large_code_share: float = 0.0  # share of cards whose code is printed large (legible in the low-res view)
    large_code_px: int = 30  # font size of a large code (bold): ~22 px of ink at native, ~11 px in the low-res view

    @property
    def mixed(self) -> bool:
        """Whether pages use the second demo's layouts (any of its settings on)."""
        return bool(self.max_cards or self.span_share or self.large_code_share)

    def validate(self) -> "CardsConfig":
        checks = [("size", 200 <= self.size <= 2048 and self.size % 2 == 0, "an even number in 200..2048"),
                  ("detail_share", 0.0 <= self.detail_share <= 1.0, "0..1"),
                  ("code_len", 1 <= self.code_len <= 6, "1..6"),
                  ("n_cards", 1 <= self.n_cards <= 4, "1..4"),
                  ("letter_px", 12 <= self.letter_px <= self.size // 3, f"12..{self.size // 3}"),
                  ("jitter", 0 <= self.jitter <= self.size // 16, f"0..{self.size // 16}"),
                  ("max_cards", self.max_cards == 0 or self.n_cards <= self.max_cards <= 4, f"0 or {self.n_cards}..4"),
                  ("span_share", 0.0 <= self.span_share <= 1.0, "0..1"),
                  ("large_code_share", 0.0 <= self.large_code_share <= 1.0, "0..1"),
                  ("large_code_px", 12 <= self.large_code_px <= self.size // 6, f"12..{self.size // 6}")]
        for name, ok, legal in checks:
            if not ok:
                raise ConfigError(f"cards: {name}={getattr(self, name)!r} is out of range ({legal})")
        get_crop_set(self.crop_set)
        return self


# The second demo's task. Stated question mix: 70% code questions, 45% of whose codes are large, so 0.7 x 0.55 =
# 38.5% of questions need detail (a crop) and 61.5% are answerable from the low-res view; 2-4 cards per page
# (uniform), and 35% of the pages with at most 3 cards hold a spanning card (its code: half near the centre line,
# half near the page edge).
DEMO2 = CardsConfig(n_cards=2, max_cards=4, span_share=0.35, large_code_share=0.45, detail_share=0.7)


@lru_cache(maxsize=1)
def _code_font() -> ImageFont.ImageFont:
    # Pillow's embedded bitmap font: crisp 1-px strokes, identical on every machine (no font files needed).
    return ImageFont.load_default_imagefont()


@dataclass(frozen=True)
class Card:
    quadrant: str  # crop id of the card's slot: a quadrant "0".."3", or the half "5".."8" a spanning card covers
    colour: str
    letter: str
    code: str
    letter_box: tuple[int, int, int, int]
    code_box: tuple[int, int, int, int]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the card's own pixels (before its 3-4 px inset)
    large: bool = False  # code printed large (legible in the low-res view)

    def row(self) -> list:
        """The card as `meta["cards"]` stores it: [slot, colour, letter, code, code box, card box, large]."""
        return [self.quadrant, self.colour, self.letter, self.code, list(self.code_box), list(self.box), self.large]


def _layout(rng: random.Random, cfg: CardsConfig) -> list[Card]:
    if cfg.mixed:
        return _layout_mixed(rng, cfg)
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
                          (cx + cl, cy + ct, cx + cr, cy + cb), (x0, y0, x0 + half, y0 + half)))
    return cards


# A spanning card's half of the page (its slot, a crop id of awares10) and the quadrants left beside it.
_SPANS = {"5": ((0, 0, 2, 1), (2, 3)), "6": ((0, 1, 2, 2), (0, 1)),  # top, bottom: wide cards
          "7": ((0, 0, 1, 2), (1, 3)), "8": ((1, 0, 2, 2), (0, 2))}  # left, right: tall cards


def _code_ink(code: str, large: bool, cfg: CardsConfig) -> tuple[int, int, int, int]:
    """The code's ink box relative to its draw point (left, top, right, bottom)."""
    return (_font(cfg.large_code_px, BOLD) if large else _code_font()).getbbox(code)


def _layout_mixed(rng: random.Random, cfg: CardsConfig) -> list[Card]:
    """The second demo's pages: n_cards..max_cards cards, some codes large, and (span_share of the pages of at most
    three cards) one card covering a half with its code across the quadrant border: near the page's centre line
    (the centre crop is the smallest holding it) or near the page's edge (only the half holds it)."""
    s, half = cfg.size, cfg.size // 2
    k = rng.randint(cfg.n_cards, cfg.max_cards or cfg.n_cards)
    span = rng.choice(sorted(_SPANS)) if k <= 3 and rng.random() < cfg.span_share else None
    if span:
        (a, b, c, d), beside = _SPANS[span]
        slots = [(span, (a * half, b * half, c * half, d * half))]
        slots += [(str(q), ((q % 2) * half, (q // 2) * half, (q % 2 + 1) * half, (q // 2 + 1) * half))
                  for q in sorted(rng.sample(beside, k - 1))]
    else:
        slots = [(str(q), ((q % 2) * half, (q // 2) * half, (q % 2 + 1) * half, (q // 2 + 1) * half))
                 for q in sorted(rng.sample(range(4), k))]
    colours, letters = rng.sample(COLOUR_NAMES, k), rng.sample(LETTERS, k)
    big = _font(cfg.letter_px, BOLD)
    cards = []
    for (slot, (x0, y0, x1, y1)), colour, letter in zip(slots, colours, letters):
        code = "".join(rng.choice("0123456789") for _ in range(cfg.code_len))
        large = rng.random() < cfg.large_code_share
        cl, ct, cr, cb = _code_ink(code, large, cfg)
        cw, ch = cr - cl, cb - ct
        l, t, r, b = _ink_size(letter, big)
        lw, lh = r - l, b - t
        if slot in "0123":  # a quadrant card: the letter in the upper part, the code below it
            lx, ly = x0 + (half - lw) // 2, y0 + (half * 2 // 3 - lh) // 2 + 4
            cx = x0 + (half - cw) // 2
            cy = y0 + (half * 3 // 4 if not large else half - ch - 8)  # a large code sits lower, clear of the letter
        elif slot in "56":  # a wide card: the letter in one of its two quadrants, the code across the middle line
            side = rng.randrange(2)
            lx, ly = x0 + side * half + (half - lw) // 2, y0 + (half - lh) // 2
            inner = rng.random() < 0.5  # near the page's centre line: the centre crop holds it
            at = 0.35 if inner else 0.12  # the code's vertical centre, in page heights from the card's outer edge
            centre_y = int(s * at) if slot == "5" else s - int(s * at)
            cx, cy = (s - cw) // 2, centre_y - ch // 2
        else:  # a tall card: the letter in one of its quadrants, the code across the horizontal middle line
            side = rng.randrange(2)
            lx, ly = x0 + (half - lw) // 2, y0 + side * half + (half - lh) // 2
            inner = rng.random() < 0.5
            at = 0.35 if inner else 0.14
            centre_x = int(s * at) if slot == "7" else s - int(s * at)
            cx, cy = centre_x - cw // 2, (s - ch) // 2
        cards.append(Card(slot, colour, letter, code, (lx, ly, lx + lw, ly + lh), (cx, cy, cx + cw, cy + ch),
                          (x0, y0, x1, y1), large))
    return cards


def _render(cards: list[Card], cfg: CardsConfig) -> Image.Image:
    im = Image.new("RGB", (cfg.size, cfg.size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    big = _font(cfg.letter_px, BOLD)
    for c in cards:
        x0, y0, x1, y1 = c.box
        d.rectangle((x0 + 3, y0 + 3, x1 - 4, y1 - 4), fill=COLOURS[c.colour])
        l, t, _, _ = _ink_size(c.letter, big)
        d.text((c.letter_box[0] - l, c.letter_box[1] - t), c.letter, font=big, fill=(255, 255, 255))
        bl, bt, br, bb = c.code_box
        d.rectangle((bl - 4, bt - 3, br + 3, bb + 2), fill=STRIP)
        font = _font(cfg.large_code_px, BOLD) if c.large else _code_font()
        cl, ct, _, _ = font.getbbox(c.code)
        d.text((bl - cl, bt - ct), c.code, font=font, fill=CODE_INK)
    return im


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"cards:{seed}:{index}")


def card_questions(card: Card) -> list[tuple[str, str, str, tuple[int, int, int, int], bool]]:
    """(template, question, answer, evidence box, needs detail) for one card: a large code does not need detail."""
    return [("code", TEMPLATES["code"].format(colour=card.colour), card.code, card.code_box, not card.large),
            ("letter", TEMPLATES["letter"].format(colour=card.colour), card.letter, card.letter_box, False)]


def page_reading(cards: list[Card]) -> str:
    """The answer to READ_QUESTION: "colour letter code" per card, in reading order (by the card's top, then left)."""
    return ", ".join(f"{c.colour} {c.letter} {c.code}" for c in sorted(cards, key=lambda c: (c.box[1], c.box[0])))


def card_slot(sample: Sample, colour: str | None = None) -> str:
    """The slot (crop id) of the card of `colour` on `sample`'s page (default: the question's card): the answer to
    WHERE_QUESTION."""
    colour = colour or sample.meta["colour"]
    for row in sample.meta["cards"]:
        if row[1] == colour:
            return str(row[0])
    raise KeyError(f"no {colour} card on {sample.id}")


def _sample(sid, image, card: Card, question, answer, box, detail, template, cfg, cards) -> Sample:
    return Sample(id=sid, image=image, question=question, answers=[answer], evidence_box=tuple(box),
                  needs_detail=detail, crop_ids=get_crop_set(cfg.crop_set).covering(box, cfg.size, cfg.size)[:1],
                  source="cards", meta={"template": template, "width": cfg.size, "height": cfg.size,
                                        "colour": card.colour, "reading": page_reading(cards),
                                        "large_code": card.large,
                                        "cards": [c.row() for c in sorted(cards, key=lambda c: (c.box[1], c.box[0]))]})


def make_card_sample(seed: int, index: int, cfg: CardsConfig | None = None) -> Sample:
    """Sample `index` of stream `seed`: one page, one question about one card (same arguments, same pixels)."""
    cfg = (cfg or CardsConfig()).validate()
    rng = _rng(seed, index)
    cards = _layout(rng, cfg)
    card = rng.choice(cards)
    code_q = rng.random() < cfg.detail_share
    template, question, answer, box, detail = card_questions(card)[0 if code_q else 1]
    return _sample(f"cards-{seed}-{index:06d}", _render(cards, cfg), card, question, answer, box, detail,
                   template, cfg, cards)


def make_card_page(seed: int, index: int, cfg: CardsConfig | None = None) -> list[Sample]:
    """Both questions about every card of page `index` (detail questions first), sharing one in-memory image."""
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


__all__ = ["CardsConfig", "DEMO2", "Card", "make_card_sample", "make_card_page", "iter_card_samples", "write_cards",
           "card_questions", "page_reading", "card_slot", "LETTERS", "TEMPLATES", "READ_QUESTION",
           "WHERE_QUESTION"]
