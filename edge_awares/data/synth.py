"""Deterministic synthetic documents for "low-res first, then crop" policies, drawn with Pillow.

Large structure (coloured panels, shapes, bar heights, a big title) stays visible in the low-res view (the image
halved per side, LANCZOS); the values that answer detail questions are small text that is legible only at
native resolution. Evidence is placed so that every crop of the crop set is the best crop for some questions.
Usage: ``write_dataset("out/synth", n=1000, seed=0)`` or ``make_sample(seed, index, SynthConfig())``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..crops import ALL, get_crop_set
from ..errors import ConfigError, CropError
from .format import Sample, write_samples

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

# Saturated enough to be told apart after downscaling; names are the answers of colour questions.
COLOURS = {
    "red": (214, 45, 40),
    "green": (46, 150, 60),
    "blue": (40, 100, 215),
    "orange": (240, 135, 20),
    "purple": (135, 65, 170),
    "pink": (230, 95, 170),
}
SHAPES = ("star", "circle", "triangle", "square", "diamond", "cross")
TITLES = ("REPORT", "INVOICE", "SUMMARY", "NOTICE", "MEMO", "RECEIPT", "BUDGET", "AGENDA")
# Glyphs that stay distinct at native resolution but blur into similar blobs at half resolution (no O/0, I/1
# pairs, which are ambiguous even at native size): a code cannot be guessed from its low-res silhouette.
CODE_ALPHABET = "CEHKMNRU3689"
REGULAR, BOLD, CONDENSED = "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed.ttf"
BAR_LETTERS = "ABCDE"
QUADRANT_NAMES = {"0": "top left", "1": "top right", "2": "bottom left", "3": "bottom right"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

DETAIL_TEMPLATES = ("panel_code", "shape_number", "bar_value")
LOWRES_TEMPLATES = ("panel_colour", "count_panels", "count_shapes", "tallest_bar", "shape_colour", "title")

VALUE_INK = (35, 35, 40)
MARGIN = 6  # px kept free at the page edge
GAP = 8  # px kept free between items, so no evidence box touches another item's ink


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings. Sizes are in pixels of the native image; the low-res view halves them."""

    width: int = 448
    height: int = 448
    detail_share: float = 0.6  # share of questions whose answer is small text
    small_font_px: int = 11  # values: cap height 8 px native, <= 4 px in the low-res view
    small_font: str = CONDENSED  # narrow glyphs merge when halved, so low-res text is a blur, not a read
    label_font_px: int = 16  # bar letters (bold): ~12 px native, ~7 px low-res, so readable in both
    title_font_px: int = 28  # the title (bold): ~20 px native
    code_len: int = 3
    max_panels: int = 4
    max_shapes: int = 3
    chart_prob: float = 0.5
    filler_blocks: int = 2  # blocks of small grey pseudo-text: distractors that answer nothing
    crop_set: str = "awares10"
    placement_tries: int = 2000

    def validate(self) -> "SynthConfig":
        """Return self, or raise ConfigError naming the bad value and the legal range."""
        checks = [
            ("width", 224 <= self.width <= 4096, "224..4096"),
            ("height", 224 <= self.height <= 4096, "224..4096"),
            ("detail_share", 0.0 <= self.detail_share <= 1.0, "0..1"),
            ("small_font_px", 6 <= self.small_font_px <= 64, "6..64"),
            ("label_font_px", 6 <= self.label_font_px <= 96, "6..96"),
            ("title_font_px", 8 <= self.title_font_px <= 128, "8..128"),
            ("code_len", 2 <= self.code_len <= 8, "2..8"),
            ("max_panels", 1 <= self.max_panels <= len(COLOURS), f"1..{len(COLOURS)}"),
            ("max_shapes", 1 <= self.max_shapes <= len(SHAPES), f"1..{len(SHAPES)}"),
            ("chart_prob", 0.0 <= self.chart_prob <= 1.0, "0..1"),
            ("filler_blocks", 0 <= self.filler_blocks <= 10, "0..10"),
            ("placement_tries", self.placement_tries >= 10, ">= 10"),
        ]
        for name, ok, legal in checks:
            if not ok:
                raise ConfigError(f"SynthConfig.{name}={getattr(self, name)!r} is out of range; legal: {legal}")
        try:
            get_crop_set(self.crop_set)
        except CropError as e:
            raise ConfigError(f"SynthConfig.crop_set: {e}") from None
        return self


# ----------------------------------------------------------------------------------------------- fonts, text
@lru_cache(maxsize=None)
def _font(size: int, face: str = REGULAR) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / face
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        # Without DejaVu the sizes still hold (Pillow's bundled font scales), only the glyph shapes differ.
        return ImageFont.load_default(size=size)


def _ink_size(text: str, font) -> tuple[int, int, int, int]:
    """(dx, dy, w, h): the ink box of `text` relative to the draw point, with anchor left-top."""
    x0, y0, x1, y1 = font.getbbox(text, anchor="lt")
    return x0, y0, x1 - x0, y1 - y0


def text_heights(font_px: int, face: str = REGULAR, text: str = "H8K") -> dict:
    """Measured ink height of black `text` on white at native resolution and after the /2 LANCZOS downscale.

    A row counts as ink where some pixel is darker than mid-grey; `lowres_darkest` (0..255) says how much
    contrast survives downscaling. This is the legibility property the generator is built on.
    """
    font = _font(font_px, face)
    dx, dy, w, h = _ink_size(text, font)
    size = (w + 16 + (w % 2), h + 16 + (h % 2))  # even sides so halving is exact
    img = Image.new("L", size, 255)
    ImageDraw.Draw(img).text((8 - dx, 8 - dy), text, font=font, fill=0, anchor="lt")
    low = img.resize((size[0] // 2, size[1] // 2), Image.LANCZOS)

    def rows(im: Image.Image) -> int:
        px = im.load()
        hit = [y for y in range(im.height) if any(px[x, y] < 128 for x in range(im.width))]
        return hit[-1] - hit[0] + 1 if hit else 0

    return {"native_px": rows(img), "lowres_px": rows(low), "lowres_darkest": low.getextrema()[0]}


def legibility(cfg: SynthConfig | None = None) -> dict:
    """text_heights for the three text roles of `cfg`: small values, bar letters, title."""
    cfg = cfg or SynthConfig()
    return {
        "small": text_heights(cfg.small_font_px, cfg.small_font, text="H8K"),
        "label": text_heights(cfg.label_font_px, BOLD, text="ABC"),
        "title": text_heights(cfg.title_font_px, BOLD, text="REPORT"),
    }


# ----------------------------------------------------------------------------------------------- items
Box = tuple[int, int, int, int]


@dataclass
class _Text:
    text: str
    xy: tuple[int, int]  # where the ink box's top-left lands
    size: int
    face: str = REGULAR
    fill: tuple[int, int, int] = (0, 0, 0)


@dataclass
class _Item:
    """A drawable thing in its own coordinates; `move` places it. Evidence boxes are named ink boxes."""

    kind: str
    box: Box
    attrs: dict
    texts: list[_Text] = field(default_factory=list)
    evidence: dict[str, Box] = field(default_factory=dict)

    def move(self, dx: int, dy: int) -> "_Item":
        sh = lambda b: (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy)  # noqa: E731
        attrs = dict(self.attrs)
        for key in ("body", "shape_box", "bars", "rule"):
            if key in attrs:
                v = attrs[key]
                attrs[key] = [sh(b) for b in v] if key == "bars" else sh(v)
        texts = [replace(t, xy=(t.xy[0] + dx, t.xy[1] + dy)) for t in self.texts]
        return _Item(self.kind, sh(self.box), attrs, texts, {k: sh(b) for k, b in self.evidence.items()})


def _text(text: str, x: int, y: int, size: int, face=REGULAR, fill=(0, 0, 0)) -> tuple[_Text, Box]:
    _, _, w, h = _ink_size(text, _font(size, face))
    return _Text(text, (x, y), size, face, fill), (x, y, x + w, y + h)


def _value(text: str, x: int, y: int, cfg: SynthConfig) -> tuple[_Text, Box]:
    """A small value (the answer of a detail question)."""
    return _text(text, x, y, cfg.small_font_px, cfg.small_font, VALUE_INK)


def _value_size(text: str, cfg: SynthConfig) -> tuple[int, int]:
    return _ink_size(text, _font(cfg.small_font_px, cfg.small_font))[2:]


def _pad(b: Box, p: int) -> Box:
    return (b[0] - p, b[1] - p, b[2] + p, b[3] + p)


def _union(boxes) -> Box:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _code(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(CODE_ALPHABET) for _ in range(n))


def _make_panel(rng, cfg, colour: str) -> _Item:
    code = _code(rng, cfg.code_len)
    tw, th = _value_size(code, cfg)
    w = max(tw + 30, rng.randint(80, 130))
    h = rng.randint(40, 60)
    t, tb = _value(code, (w - tw) // 2, (h - th) // 2, cfg)
    return _Item("panel", (0, 0, w, h), {"colour": colour, "code": code, "body": (0, 0, w, h)},
                 [t], {"code": _pad(tb, 2)})


def _make_shape(rng, cfg, shape: str, colour: str) -> _Item:
    s = rng.randint(30, 42)
    number = str(rng.randint(10, 99))
    tw, th = _value_size(number, cfg)
    w = max(s, tw)
    t, tb = _value(number, (w - tw) // 2, s + 5, cfg)
    sx = (w - s) // 2
    return _Item("shape", (0, 0, w, s + 5 + th), {"shape": shape, "colour": colour, "number": number,
                                                  "shape_box": (sx, 0, sx + s, s)}, [t], {"number": _pad(tb, 2)})


def _make_chart(rng, cfg) -> _Item:
    n = rng.randint(3, len(BAR_LETTERS))
    # Distinct values with a clear winner, so "which bar is tallest" is answerable at low resolution.
    while True:
        values = rng.sample(range(10, 100), n)
        top = sorted(values)
        if top[-1] - top[-2] >= 12:
            break
    bar_w, gap, max_h = 22, 12, 90
    label = cfg.label_font_px
    vh = _value_size("88", cfg)[1]
    _, _, _, lh = _ink_size("A", _font(label, BOLD))
    base_y = vh + 6 + max_h  # y of the baseline
    bars, texts, evidence = [], [], {}
    for i, v in enumerate(values):
        x0 = 4 + i * (bar_w + gap)
        # Heights follow the values, as in real charts; at half resolution one pixel spans ~2 units, so the
        # exact value still has to be read from the text.
        h = round(v / 99 * max_h)
        bars.append((x0, base_y - h, x0 + bar_w, base_y))
        tw = _value_size(str(v), cfg)[0]
        t, tb = _value(str(v), x0 + (bar_w - tw) // 2, base_y - h - vh - 4, cfg)
        texts.append(t)
        evidence[BAR_LETTERS[i]] = _pad(tb, 2)
        _, _, lw, _ = _ink_size(BAR_LETTERS[i], _font(label, BOLD))
        texts.append(_text(BAR_LETTERS[i], x0 + (bar_w - lw) // 2, base_y + 5, label, BOLD)[0])
    w = 8 + n * (bar_w + gap) - gap
    colour = rng.choice(sorted(COLOURS))
    return _Item("chart", (0, 0, w, base_y + 5 + lh),
                 {"values": dict(zip(BAR_LETTERS, values)), "colour": colour, "bars": bars,
                  "rule": (0, base_y, w, base_y + 2)}, texts, evidence)


def _make_title(rng, cfg) -> _Item:
    word = rng.choice(TITLES)
    t, tb = _text(word, 0, 0, cfg.title_font_px, BOLD, fill=(25, 25, 35))
    return _Item("title", (0, 0, tb[2], tb[3] + 6), {"word": word, "rule": (0, tb[3] + 4, tb[2], tb[3] + 6)},
                 [t], {"title": _pad(tb, 2)})


def _make_filler(rng, cfg) -> _Item:
    lines, texts, y = rng.randint(2, 4), [], 0
    width = rng.randint(90, 170)
    for _ in range(lines):
        line = ""
        while True:
            word = "".join(rng.choice("abcdeghilmnorstu") for _ in range(rng.randint(2, 7)))
            trial = (line + " " + word).strip()
            if _value_size(trial, cfg)[0] > width:
                break
            line = trial
        t, tb = _text(line or word[:3], 0, y, cfg.small_font_px, cfg.small_font, fill=(120, 120, 120))
        texts.append(t)
        y = tb[3] + 5
    return _Item("filler", (0, 0, width, y - 5), {}, texts)


# ----------------------------------------------------------------------------------------------- placement
def _fits(box: Box, cfg: SynthConfig) -> bool:
    return box[0] >= MARGIN and box[1] >= MARGIN and box[2] <= cfg.width - MARGIN and box[3] <= cfg.height - MARGIN


def _free(box: Box, placed: list[_Item]) -> bool:
    x0, y0, x1, y1 = _pad(box, GAP)
    return all(x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3] for b in (p.box for p in placed))


def _place_anywhere(item: _Item, rng, cfg, placed: list[_Item], ok=lambda it: True) -> _Item | None:
    """Uniform random position on free space (and satisfying `ok`); None if nothing fits."""
    w, h = item.box[2] - item.box[0], item.box[3] - item.box[1]
    if w > cfg.width - 2 * MARGIN or h > cfg.height - 2 * MARGIN:
        return None
    for _ in range(cfg.placement_tries // 10):
        moved = item.move(rng.randint(MARGIN, cfg.width - MARGIN - w) - item.box[0],
                          rng.randint(MARGIN, cfg.height - MARGIN - h) - item.box[1])
        if _free(moved.box, placed) and ok(moved):
            return moved
    return None


def _place_for_crop(item: _Item, key: str, target: str, rng, cfg, placed: list[_Item]) -> _Item | None:
    """Place `item` so that its evidence `key` has `target` as the smallest covering crop.

    Proposes the evidence box uniformly inside the target crop's pixel box and keeps the first proposal whose
    smallest covering crop is the target (a box inside a half that crosses its midline, say); rejection on the
    real crop geometry keeps this right for any crop set.
    """
    crops = get_crop_set(cfg.crop_set)
    left, top, right, bottom = crops.pixel_box(target, cfg.width, cfg.height)
    ev = item.evidence[key]
    ew, eh = ev[2] - ev[0], ev[3] - ev[1]
    if ew > right - left or eh > bottom - top:
        return None
    for _ in range(cfg.placement_tries):
        x, y = rng.randint(left, right - ew), rng.randint(top, bottom - eh)
        moved = item.move(x - ev[0], y - ev[1])
        if not _fits(moved.box, cfg) or not _free(moved.box, placed):
            continue
        cover = crops.covering(moved.evidence[key], cfg.width, cfg.height)
        if cover and cover[0] == target:
            return moved
    return None


# ----------------------------------------------------------------------------------------------- drawing
def _tint(rgb, amount: float) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in rgb)


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, box: Box, rgb) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        d.ellipse(box, fill=rgb)
    elif shape == "square":
        d.rectangle((x0 + 3, y0 + 3, x1 - 3, y1 - 3), fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "cross":
        a = r / 3
        d.rectangle((cx - a, y0, cx + a, y1), fill=rgb)
        d.rectangle((x0, cy - a, x1, cy + a), fill=rgb)
    elif shape == "star":
        pts = []
        for i in range(10):  # five outer and five inner vertices, alternating
            ang = -math.pi / 2 + i * math.pi / 5
            rad = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        d.polygon(pts, fill=rgb)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _render(items: list[_Item], cfg: SynthConfig, paper) -> Image.Image:
    img = Image.new("RGB", (cfg.width, cfg.height), paper)
    d = ImageDraw.Draw(img)
    for it in items:
        if it.kind == "panel":
            rgb = COLOURS[it.attrs["colour"]]
            d.rectangle(it.attrs["body"], fill=_tint(rgb, 0.72), outline=rgb, width=4)
        elif it.kind == "shape":
            _draw_shape(d, it.attrs["shape"], it.attrs["shape_box"], COLOURS[it.attrs["colour"]])
        elif it.kind == "chart":
            for bar in it.attrs["bars"]:
                d.rectangle(bar, fill=COLOURS[it.attrs["colour"]])
            d.rectangle(it.attrs["rule"], fill=(60, 60, 60))
        elif it.kind == "title":
            d.rectangle(it.attrs["rule"], fill=(60, 60, 80))
        for t in it.texts:
            font = _font(t.size, t.face)
            dx, dy, _, _ = _ink_size(t.text, font)
            d.text((t.xy[0] - dx, t.xy[1] - dy), t.text, font=font, fill=t.fill, anchor="lt")
    return img


# ----------------------------------------------------------------------------------------------- samples
def _rng(seed: int, index: int) -> random.Random:
    # A hash of (seed, index), not seed + index, so that neighbouring seeds do not share samples.
    digest = hashlib.sha256(f"edge-awares-synth:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _quadrant(box: Box, cfg: SynthConfig) -> str | None:
    """The page quadrant ("0".."3") that wholly contains `box`, else None."""
    mx, my = cfg.width / 2, cfg.height / 2
    col = 0 if box[2] <= mx else 1 if box[0] >= mx else None
    row = 0 if box[3] <= my else 1 if box[1] >= my else None
    return None if col is None or row is None else str(row * 2 + col)


def _fill_page(rng: random.Random, cfg: SynthConfig, placed: list[_Item]) -> None:
    """Add a title, maybe a chart, panels, shapes and filler around what is already placed."""
    title = _place_anywhere(_make_title(rng, cfg), rng, cfg, placed, ok=lambda it: it.box[3] <= cfg.height // 3)
    if title is not None:
        placed.append(title)
    if not any(p.kind == "chart" for p in placed) and rng.random() < cfg.chart_prob:
        chart = _place_anywhere(_make_chart(rng, cfg), rng, cfg, placed)
        if chart is not None:
            placed.append(chart)
    used = {p.attrs["colour"] for p in placed if p.kind == "panel"}
    for _ in range(rng.randint(1, cfg.max_panels) - len(used)):
        colour = rng.choice([c for c in sorted(COLOURS) if c not in used])
        panel = _place_anywhere(_make_panel(rng, cfg, colour), rng, cfg, placed)
        if panel is not None:
            placed.append(panel)
            used.add(colour)
    kinds = {p.attrs["shape"] for p in placed if p.kind == "shape"}
    for _ in range(rng.randint(1, cfg.max_shapes) - len(kinds)):
        shape = rng.choice([s for s in SHAPES if s not in kinds])
        item = _place_anywhere(_make_shape(rng, cfg, shape, rng.choice(sorted(COLOURS))), rng, cfg, placed)
        if item is not None:
            placed.append(item)
            kinds.add(shape)
    for _ in range(cfg.filler_blocks):
        filler = _place_anywhere(_make_filler(rng, cfg), rng, cfg, placed)
        if filler is not None:
            placed.append(filler)


def _detail_item(template: str, rng, cfg) -> tuple[_Item, str]:
    if template == "panel_code":
        return _make_panel(rng, cfg, rng.choice(sorted(COLOURS))), "code"
    if template == "shape_number":
        return _make_shape(rng, cfg, rng.choice(SHAPES), rng.choice(sorted(COLOURS))), "number"
    chart = _make_chart(rng, cfg)
    return chart, rng.choice(sorted(chart.evidence))


def _detail_question(item: _Item, key: str) -> tuple[str, list[str], Box]:
    a, box = item.attrs, item.evidence[key]
    if item.kind == "panel":
        return f"What is the code written in the {a['colour']} panel?", [a["code"]], box
    if item.kind == "shape":
        return f"What number is printed under the {a['shape']}?", [a["number"]], box
    return f"What value is written above bar {key}?", [str(a["values"][key])], box


def _lowres_questions(placed: list[_Item], cfg: SynthConfig) -> dict[str, list[tuple[str, list[str], Box]]]:
    """Every low-res-answerable question the page supports, by template."""
    panels = [p for p in placed if p.kind == "panel"]
    shapes = [p for p in placed if p.kind == "shape"]
    out: dict[str, list] = {}
    for q, name in QUADRANT_NAMES.items():
        centred = [p for p in panels if _quadrant(_centre_box(p.box), cfg) == q]
        # One panel, wholly inside the quadrant: "the panel at the top left" must not be ambiguous.
        if len(centred) == 1 and _quadrant(centred[0].box, cfg) == q:
            p = centred[0]
            out.setdefault("panel_colour", []).append(
                (f"What colour is the panel at the {name}?", [p.attrs["colour"]], p.box))
    for kind, items in (("panels", panels), ("shapes", shapes)):
        if items:
            n = len(items)
            out[f"count_{kind}"] = [(f"How many {kind} are on the page?", [str(n), NUMBER_WORDS[n]],
                                     _union(p.box for p in items))]
    for p in placed:
        if p.kind == "chart":
            values = p.attrs["values"]
            out["tallest_bar"] = [("Which bar is tallest?", [max(values, key=values.get)], p.box)]
        elif p.kind == "title":
            out["title"] = [("What is the title of the page?", [p.attrs["word"]], p.evidence["title"])]
    for p in shapes:
        out.setdefault("shape_colour", []).append(
            (f"What colour is the {p.attrs['shape']}?", [p.attrs["colour"]], p.attrs["shape_box"]))
    return out


def _centre_box(b: Box) -> Box:
    cx, cy = (b[0] + b[2]) // 2, (b[1] + b[3]) // 2
    return (cx, cy, cx + 1, cy + 1)


@dataclass
class _Page:
    placed: list[_Item]
    paper: tuple[int, int, int]
    rng: random.Random
    focus: tuple[_Item, str, str] | None  # (item, evidence key, template) of the planned detail question


def _layout(seed: int, index: int, cfg: SynthConfig) -> _Page:
    crops = get_crop_set(cfg.crop_set)
    rng = _rng(seed, index)
    paper = rng.choice([(255, 255, 255), (250, 249, 243), (246, 248, 251)])
    placed: list[_Item] = []
    focus = None
    if rng.random() < cfg.detail_share:
        template = rng.choice(DETAIL_TEMPLATES)
        target = rng.choice([c for c in crops.ids if c != ALL])
        item, key = _detail_item(template, rng, cfg)
        # Placed first, on an empty page, so the target crop is reachable; fallback: anywhere.
        placed_item = _place_for_crop(item, key, target, rng, cfg, placed) or _place_anywhere(item, rng, cfg, placed)
        if placed_item is not None:
            placed.append(placed_item)
            focus = (placed_item, key, template)
    _fill_page(rng, cfg, placed)
    return _Page(placed, paper, rng, focus)


def _detail_questions(placed: list[_Item]) -> dict[str, list[tuple[str, list[str], Box]]]:
    """Every small-text question the page supports, by template."""
    out: dict[str, list] = {}
    for p in placed:
        template = {"panel": "panel_code", "shape": "shape_number", "chart": "bar_value"}.get(p.kind)
        for key in sorted(p.evidence) if template else ():
            out.setdefault(template, []).append(_detail_question(p, key))
    return out


def _sample(sid: str, image, question: str, answers, box, needs_detail: bool, template: str,
            cfg: SynthConfig) -> Sample:
    box = tuple(int(v) for v in box)
    return Sample(
        id=sid,
        image=image,
        question=question,
        answers=list(answers),
        evidence_box=box,
        needs_detail=needs_detail,
        crop_ids=get_crop_set(cfg.crop_set).covering(box, cfg.width, cfg.height)[:1],
        source="synth",
        meta={"template": template, "width": cfg.width, "height": cfg.height},
    )


def make_sample(seed: int, index: int, cfg: SynthConfig | None = None) -> Sample:
    """Sample number `index` of the stream `seed`: one page, one question. Same arguments, same pixels and
    record (on any machine with the same Pillow and fonts). The image is in memory (write_samples saves it).

    Raises ConfigError for an invalid `cfg`.
    """
    cfg = (cfg or SynthConfig()).validate()
    page = _layout(seed, index, cfg)
    if page.focus is not None:
        item, key, template = page.focus
        question, answers, box = _detail_question(item, key)
    else:
        options = _lowres_questions(page.placed, cfg)
        template = page.rng.choice(sorted(options))
        question, answers, box = page.rng.choice(options[template])
    image = _render(page.placed, cfg, page.paper)
    return _sample(f"synth-{seed}-{index:06d}", image, question, answers, box, page.focus is not None, template, cfg)


def make_page(seed: int, index: int, cfg: SynthConfig | None = None) -> list[Sample]:
    """Every question the page of `make_sample(seed, index, cfg)` supports (small-text ones first), all
    sharing one in-memory image; ids end in ``-q0``, ``-q1``, ... Useful for examples and dense evaluation.
    """
    cfg = (cfg or SynthConfig()).validate()
    page = _layout(seed, index, cfg)
    image = _render(page.placed, cfg, page.paper)
    out = []
    for detail, questions in ((True, _detail_questions(page.placed)), (False, _lowres_questions(page.placed, cfg))):
        for template in sorted(questions):
            for question, answers, box in questions[template]:
                out.append(_sample(f"synth-{seed}-{index:06d}-q{len(out)}", image, question, answers, box,
                                   detail, template, cfg))
    return out


def iter_samples(n: int, seed: int = 0, cfg: SynthConfig | None = None, start: int = 0):
    """Samples `start` .. `start + n - 1` of the stream `seed`."""
    cfg = (cfg or SynthConfig()).validate()
    for index in range(start, start + n):
        yield make_sample(seed, index, cfg)


def write_dataset(out_dir, n: int, seed: int = 0, cfg: SynthConfig | None = None, force: bool = False) -> Path:
    """Write `n` samples to `out_dir`/samples.jsonl and their PNGs to `out_dir`/images/; returns the JSONL path.

    The folder must be new or empty, or (with `force`) a dataset of ours, which is then replaced whole: it is
    written aside and renamed into place (edge_awares.outputs), so a failure leaves nothing. Raises ConfigError
    for an invalid `cfg` or a negative `n`, OutputError for any other folder or an unwritable place.
    """
    from ..outputs import building

    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    cfg = (cfg or SynthConfig()).validate()
    with building(out_dir, "dataset", force=force) as tmp:
        write_samples(tmp / "samples.jsonl", iter_samples(n, seed, cfg), image_dir="images")
    return Path(out_dir) / "samples.jsonl"
