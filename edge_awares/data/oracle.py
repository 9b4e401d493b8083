"""Curation oracles: where in the image is the evidence for an HR sample, and which crop ids fetch it.

An oracle returns a pixel box: `gt` (the sample's evidence_box), `ocr` (rapidocr word boxes matching the answer
text), `vlm` (a grounding prompt through the session API, answered as a 0-1000 box), `auto` (gt, else ocr).
`crops_for_box` maps the box to crop ids by the stated rule (IoU >= 0.5, else the smallest covering crop).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from PIL import Image

from ..crops import ALL, AWARES_CROPS, CropSet
from ..errors import BackendUnavailableError, ConfigError
from .metrics import levenshtein

ORACLES = ("auto", "gt", "ocr", "vlm")
VLM_COORDS = ("norm1000", "pixels")
MIN_IOU = 0.5

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------- box -> crops
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clamp_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """`box` ordered (x0 < x1, y0 < y1), rounded outward to whole pixels and clipped to the image; None if
    nothing of it is inside the image."""
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    out = (max(0, int(x0)), max(0, int(y0)), min(width, -int(-x1 // 1)), min(height, -int(-y1 // 1)))
    return out if out[0] < out[2] and out[1] < out[3] else None


@dataclass
class CropChoice:
    crop_ids: list[str]
    rule: str  # "iou", "covering", or "miss" (no box: the whole image)
    iou: float | None = None  # IoU of the box with the chosen crop


def crops_for_box(box: Sequence[float] | None, width: int, height: int, crop_set: CropSet = AWARES_CROPS,
                  min_iou: float = MIN_IOU) -> CropChoice:
    """The crop ids an HR trajectory requests for an evidence box (pixels of the original image).

    Rule, in order:
    1. IoU: the crop (of the whole set, `all` included) whose pixel box has the highest IoU with `box`, if that
       IoU is >= `min_iou` (0.5, as in AwaRes); ties go to the smaller crop, then to crop-set order. Loose boxes
       (a grounding VLM's region) land here; the chosen crop may cut off a sliver of the box.
    2. covering: otherwise the smallest crop whose pixel box contains the whole box (`CropSet.covering`); small
       evidence (a word, a number) always lands here. `all` contains every box, so this never fails.
    3. miss: no box (the oracle found nothing, or the box lies outside the image): `all`.
    """
    clamped = clamp_box(box, width, height) if box is not None else None
    if clamped is None:
        return CropChoice([ALL], "miss")
    scored = []
    for order, cid in enumerate(crop_set.ids):
        pb = crop_set.pixel_box(cid, width, height)
        scored.append((iou(clamped, pb), -(pb[2] - pb[0]) * (pb[3] - pb[1]), -order, cid))
    best = max(scored)
    if best[0] >= min_iou:
        return CropChoice([best[3]], "iou", round(best[0], 4))
    cid = crop_set.covering(clamped, width, height)[0]
    pb = crop_set.pixel_box(cid, width, height)
    return CropChoice([cid], "covering", round(iou(clamped, pb), 4))


# ----------------------------------------------------------------------------------------------- oracles
@dataclass
class Located:
    """An oracle's answer: a box in original-image pixels (None: not found), who found it, and how."""

    box: Box | None
    source: str
    detail: dict = field(default_factory=dict)


class Oracle(ABC):
    name = ""

    @abstractmethod
    def locate(self, sample, image: Image.Image, texts: Sequence[str]) -> Located:
        """Find the evidence of `sample` in `image`; `texts` are answer strings to look for, best first."""


class GroundTruthOracle(Oracle):
    """The sample's own evidence_box (synthetic data, or a benchmark that has boxes)."""

    name = "gt"

    def locate(self, sample, image, texts) -> Located:
        box = getattr(sample, "evidence_box", None)
        if box is None:
            return Located(None, self.name, {"reason": "sample has no evidence_box"})
        return Located(clamp_box(box, image.width, image.height), self.name)


def _norm(s: str) -> str:
    # OCR splits and joins words and punctuation unpredictably; compare the letters and digits only.
    return re.sub(r"[\W_]+", "", s.lower())


def _similarity(a: str, b: str) -> float:
    longest = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / longest if longest else 0.0


def _poly_box(poly, scale: float = 1.0) -> Box:
    xs, ys = [float(p[0]) / scale for p in poly], [float(p[1]) / scale for p in poly]
    return (int(min(xs)), int(min(ys)), -int(-max(xs) // 1), -int(-max(ys) // 1))


class OcrOracle(Oracle):
    """Matches answer text against rapidocr's word boxes (documents). rapidocr 3.x ships its ONNX models inside
    the wheel, so this runs offline (~1 s per page on a CPU core).

    Candidates are runs of consecutive words within one OCR line (up to the answer's word count + 1) and whole
    lines; similarity is 1 - edit distance / longer length over letters and digits only. The best candidate
    over all answer texts wins if its similarity is >= `min_similarity` (answers of 1-2 characters must match
    exactly: fuzzy matching them finds every stray digit). Ties: the shorter run, then the higher OCR score,
    then reading order. Several equally good places are reported as `matches` in the detail.

    Pages are upscaled (x`upscale`, long side at most 2000 px, rapidocr's own cap) before reading: on 13
    synthetic detail questions (8 of them missed at 1x) 2x found all 13, 1x found 5. The box found is padded by
    `pad_px` (as synthetic evidence boxes are), so a crop edge never cuts a glyph the detector clipped.
    """

    name = "ocr"
    max_side = 2000

    def __init__(self, min_similarity: float = 0.8, threads: int = 2, upscale: float = 2.0, pad_px: int = 2):
        if not 0.0 < min_similarity <= 1.0:
            raise ConfigError(f"OCR min similarity {min_similarity} must be in (0, 1]")
        self.min_similarity, self.threads, self.upscale, self.pad_px = min_similarity, threads, upscale, pad_px
        self._engine = None

    @staticmethod
    def available() -> bool:
        try:
            import rapidocr  # noqa: F401
        except ImportError:
            return False
        return True

    def _load(self):
        if self._engine is not None:
            return self._engine
        try:
            from rapidocr import RapidOCR
        except ImportError:
            raise BackendUnavailableError("the OCR oracle needs the package 'rapidocr': pip install "
                                          "'rapidocr>=3.10,<4'") from None
        self._engine = RapidOCR(params={
            "Global.log_level": "warning",  # its INFO lines would break the progress bar
            "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
        })
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        return self._engine

    def read(self, image: Image.Image) -> list[list[tuple[str, float, Box]]]:
        """OCR lines, each a list of (word, score, box in `image` pixels) in reading order."""
        scale = max(1.0, min(self.upscale, self.max_side / max(image.size)))
        if scale > 1.0:
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, Image.LANCZOS)
        out = self._load()(image, return_word_box=True)
        lines = []
        words = getattr(out, "word_results", None) or ()
        if out.txts is None:
            return []
        for i, (text, score, poly) in enumerate(zip(out.txts, out.scores, out.boxes)):
            ws = words[i] if i < len(words) and words[i] else ()
            parsed = [(str(w), float(s), _poly_box(p, scale)) for w, s, p in ws if str(w).strip()]
            lines.append(parsed or [(str(text), float(score), _poly_box(poly, scale))])
        return lines

    def match(self, lines, texts: Sequence[str]) -> tuple[float, Box | None, dict]:
        """(similarity, box, detail) of the best candidate for any of `texts` in OCR `lines`."""
        cands = []  # (sort key, box, matched words, answer text)
        for text in texts:
            target = _norm(text)
            if not target:
                continue
            span_max = len(text.split()) + 1
            for li, line in enumerate(lines):
                spans = [(i, j) for i in range(len(line)) for j in range(i + 1, min(len(line), i + span_max) + 1)]
                if len(line) > span_max:
                    spans.append((0, len(line)))  # the whole line, e.g. when word boxes split mid-answer
                for i, j in spans:
                    words = line[i:j]
                    cand = _norm("".join(w for w, _, _ in words))
                    if len(target) <= 2 and cand != target:
                        continue
                    key = (_similarity(cand, target), -(j - i), min(s for _, s, _ in words), -li, -i)
                    box = (min(b[0] for _, _, b in words), min(b[1] for _, _, b in words),
                           max(b[2] for _, _, b in words), max(b[3] for _, _, b in words))
                    cands.append((key, box, " ".join(w for w, _, _ in words), text))
        if not cands:
            reason = ("no answer text to look for" if not any(map(_norm, texts)) else
                      "no OCR text" if not lines else "answer text not found")
            return 0.0, None, {"reason": reason}
        key, box, matched, text = max(cands, key=lambda c: c[0])
        # Equally good places elsewhere on the page (the same number printed twice): reported, not resolved.
        places = {c[1] for c in cands if c[0][:2] == key[:2]}
        detail = {"matched": matched, "answer": text, "similarity": round(key[0], 3), "matches": len(places)}
        if key[0] < self.min_similarity:
            detail["reason"] = f"best match below {self.min_similarity}"
            return key[0], None, detail
        return key[0], box, detail

    def locate(self, sample, image, texts) -> Located:
        _, box, detail = self.match(self.read(image), texts)
        if box is not None:
            p = self.pad_px
            box = clamp_box((box[0] - p, box[1] - p, box[2] + p, box[3] + p), image.width, image.height)
        return Located(box, self.name, detail)


class AutoOracle(Oracle):
    """Ground truth where the sample has it, else OCR. Without rapidocr the OCR step reports a miss (with the
    reason) instead of failing the run: a dataset with boxes everywhere never needs it."""

    name = "auto"

    def __init__(self, ocr: OcrOracle | None = None):
        self.gt = GroundTruthOracle()
        self.ocr = ocr or OcrOracle()
        self._ocr_ok = OcrOracle.available()

    def locate(self, sample, image, texts) -> Located:
        if getattr(sample, "evidence_box", None) is not None:
            return self.gt.locate(sample, image, texts)
        if not self._ocr_ok:
            return Located(None, "ocr", {"reason": "rapidocr not installed (pip install 'rapidocr>=3.10,<4')"})
        return self.ocr.locate(sample, image, texts)


VLM_PROMPT = ("Find the region of the image that shows the answer to this question: {question}\n"
              "The answer is: {answer}\n"
              "Reply with only its bounding box [x1, y1, x2, y2], coordinates from 0 to 1000.")

_NUM = r"-?\d+(?:\.\d+)?"


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first box in a grounding reply: a bracketed list of four numbers ("[12, 30, 400, 88]", also inside
    JSON such as {"bbox_2d": [...]}), else the first four numbers of the text; None when there are fewer."""
    m = re.search(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]", text)
    nums = m.groups() if m else re.findall(_NUM, text)[:4]
    if len(nums) < 4:
        return None
    return tuple(float(n) for n in nums)  # type: ignore[return-value]


class VlmOracle(Oracle):
    """Asks a grounding VLM (any checkpoint the session API runs; `plain` protocol, native view) for the box.

    `coords`: "norm1000" (Qwen3-VL and the AwaRes curation: 0-1000 on both axes, scaled by the image size) or
    "pixels" (Qwen2.5-VL's own grounding: pixels of the native view the model saw, scaled to the original).
    """

    name = "vlm"

    def __init__(self, session, coords: str = "norm1000", prompt: str = VLM_PROMPT, max_new_tokens: int = 48):
        if coords not in VLM_COORDS:
            raise ConfigError(f"unknown VLM box coordinates {coords!r}; legal: {', '.join(VLM_COORDS)}")
        self.session, self.coords, self.prompt, self.max_new_tokens = session, coords, prompt, max_new_tokens

    def locate(self, sample, image, texts) -> Located:
        answer = next((t for t in texts if t.strip()), "")
        q = self.prompt.format(question=sample.question.strip(), answer=answer.strip())
        r = self.session.run(image, q, crops="none", view="native", max_new_tokens=self.max_new_tokens)
        raw = parse_box(r.answer)
        detail = {"reply": r.answer[:200]}
        if raw is None:
            detail["reason"] = "no box in the reply"
            return Located(None, self.name, detail)
        if self.coords == "norm1000":
            sx, sy = image.width / 1000.0, image.height / 1000.0
        else:
            from ..views import native_view

            view = native_view(image, self.session.geometry)
            sx, sy = image.width / view.width, image.height / view.height
        box = clamp_box((raw[0] * sx, raw[1] * sy, raw[2] * sx, raw[3] * sy), image.width, image.height)
        if box is None:
            detail["reason"] = "box outside the image"
        return Located(box, self.name, detail)


def make_oracle(name: str, session=None, coords: str = "norm1000", ocr_min_similarity: float = 0.8) -> Oracle:
    """An oracle by name (one of ORACLES). `vlm` needs `session` (the grounding model's). Raises ConfigError
    for an unknown name, BackendUnavailableError for `ocr` without rapidocr."""
    if name == "gt":
        return GroundTruthOracle()
    if name == "ocr":
        oracle = OcrOracle(ocr_min_similarity)
        oracle._load()  # fail now, not after an hour of model answers
        return oracle
    if name == "auto":
        return AutoOracle(OcrOracle(ocr_min_similarity))
    if name == "vlm":
        if session is None:
            raise ConfigError("the vlm oracle needs a session over a grounding checkpoint")
        return VlmOracle(session, coords)
    raise ConfigError(f"unknown oracle {name!r}; legal: {', '.join(ORACLES)}")
