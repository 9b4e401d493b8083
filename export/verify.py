"""Verification of an exported engine against the PyTorch reference on fixed inputs.

Two kinds of numbers, over the same fixed conversations (a fixed image and question; the model's own crop
policy, and forced crops so that the crop turn always runs on top of the kept cache):
- free-running greedy tokens of each backend, compared turn by turn (fp32 must match exactly);
- teacher-forced logits: the candidate is fed the reference's tokens, so every decode position is compared
  (max absolute / relative logit error, top-1 agreement) even after a quantized engine would diverge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from edge_awares.session import Session

QUESTION = "What is the total written in the top-left box?"
CROP_POLICIES = ("model", "0,4")


def fixed_image(width: int = 560, height: int = 420) -> Image.Image:
    """A deterministic test image (a gradient page with boxes and text), independent of any RNG version."""
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([(xx * 255) // width, (yy * 255) // height, ((xx ^ yy) & 255)], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    d.rectangle([20, 20, width // 2 - 20, height // 3], outline=(0, 0, 0), width=4)
    d.text((30, 30), "Total: 1234", fill=(255, 255, 255))
    d.ellipse([width // 2, height // 2, width - 30, height - 30], outline=(255, 0, 0), width=5)
    return img


class _Recorder:
    """A greedy sampler that records the logits it saw."""

    def __init__(self):
        self.logits: list[np.ndarray] = []

    def __call__(self, logits: np.ndarray) -> int:
        self.logits.append(np.asarray(logits, dtype=np.float32).copy())
        return int(np.argmax(logits))


class _Forced(_Recorder):
    """Returns the reference's tokens in order (teacher forcing), recording the candidate's logits."""

    def __init__(self, tokens: list[int]):
        super().__init__()
        self._tokens = list(tokens)

    def __call__(self, logits: np.ndarray) -> int:
        self.logits.append(np.asarray(logits, dtype=np.float32).copy())
        return self._tokens[len(self.logits) - 1]


@dataclass
class Deviation:
    """How far a candidate engine is from the reference on the fixed inputs."""

    tokens_equal: bool
    turns_equal: list[bool]
    token_agreement: float  # fraction of free-running generated tokens equal, position by position
    top1_agreement: float  # teacher-forced: candidate argmax == reference token
    max_abs_logit_err: float
    rel_logit_err: float  # max |delta| / max |reference logit|
    positions: int
    # Teacher-forced positions where the candidate's argmax differs: the reference's logit gap between its
    # token and the candidate's pick. Gaps within the logit error are near-ties, not export bugs.
    flip_gaps: list[float] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)

    @property
    def ties_only(self) -> bool:
        """Every argmax flip is a near-tie (gap within twice the max logit error)."""
        return all(g <= 2 * self.max_abs_logit_err for g in self.flip_gaps)

    def to_dict(self) -> dict:
        return dict(self.__dict__, ties_only=self.ties_only)


def compare_sessions(reference: Session, candidate: Session, image: Image.Image | None = None,
                     question: str = QUESTION, crop_policies=CROP_POLICIES, max_new_tokens: int = 12) -> Deviation:
    """Run both sessions on the fixed conversations; see the module docstring for what is measured."""
    image = image or fixed_image()
    turns_equal, ids_equal, details = [], [], []
    same = total = 0
    errs, refmax, top1, positions, gaps = [], [], 0, 0, []
    for crops in crop_policies:
        rec = _Recorder()
        ref = reference.run(image, question, crops=crops, sampler=rec, max_new_tokens=max_new_tokens)
        cand = candidate.run(image, question, crops=crops, sampler=_Recorder(), max_new_tokens=max_new_tokens)
        for rt, ct in zip(ref.turns, cand.turns):
            turns_equal.append(rt.generated_ids == ct.generated_ids)
            n = max(len(rt.generated_ids), len(ct.generated_ids))
            same += sum(a == b for a, b in zip(rt.generated_ids, ct.generated_ids))
            total += n
        ids_equal.append(len(ref.turns) == len(cand.turns) and np.array_equal(ref.ids, cand.ids))
        # teacher forcing along the reference's own tokens
        tokens = [t for turn in ref.turns for t in turn.generated_ids]
        forced = _Forced(tokens)
        candidate.run(image, question, crops=crops, sampler=forced, max_new_tokens=max_new_tokens)
        for r, c, t in zip(rec.logits, forced.logits, tokens):
            errs.append(float(np.abs(r - c).max()))
            refmax.append(float(np.abs(r).max()))
            pick = int(np.argmax(c))
            top1 += int(pick == t)
            if pick != t:
                gaps.append(float(r[t] - r[pick]))
            positions += 1
        details.append({"crops": crops, "reference_turns": [t.generated_ids for t in ref.turns],
                        "candidate_turns": [t.generated_ids for t in cand.turns]})
    max_err = max(errs) if errs else 0.0
    return Deviation(
        tokens_equal=all(turns_equal) and all(ids_equal), turns_equal=turns_equal,
        token_agreement=same / total if total else 1.0, top1_agreement=top1 / positions if positions else 1.0,
        max_abs_logit_err=max_err, rel_logit_err=max_err / max(max(refmax, default=1.0), 1e-12),
        positions=positions, flip_gaps=gaps, details=details)
