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


NATIVE = "native"  # a verification conversation that starts from the native view (no crop turn)


def crop_policies_for(crop_set, protocol=None) -> tuple[str, str]:
    """The model's own policy and two forced crops of `crop_set` (AwaRes's "0,4" where it has them), so the
    crop turn always runs on top of the kept cache. A protocol with no crop tool (plain: a base model) has no
    crop turn to check; its second conversation is the single native pass instead (the baseline it serves)."""
    if protocol is not None and not protocol.tools(crop_set):
        return ("model", NATIVE)
    ids = [i for i in crop_set.ids if i != "all"]
    forced = "0,4" if {"0", "4"} <= set(ids) else ",".join(ids[:2] or ["all"])
    return ("model", forced)


def _run_args(policy: str) -> dict:
    return {"crops": "none", "view": "native"} if policy == NATIVE else {"crops": policy}


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


@dataclass
class ReferenceRun:
    """What the reference did on one fixed conversation: its turns, ids and the logits it saw."""

    crops: str
    image_index: int
    turns: list[list[int]]
    ids: np.ndarray
    logits: list[np.ndarray]


def record_reference(reference: Session, images: list[Image.Image] | None = None, question: str = QUESTION,
                     crop_policies=None, max_new_tokens: int = 12) -> list[ReferenceRun]:
    """Run the reference on every fixed conversation and keep what the comparison needs (a few MB), so the
    reference can be released before the candidate is loaded."""
    runs = []
    for i, image in enumerate(images or [fixed_image()]):
        for crops in crop_policies or crop_policies_for(reference.crop_set, reference.protocol):
            rec = _Recorder()
            ref = reference.run(image, question, **_run_args(crops), sampler=rec, max_new_tokens=max_new_tokens)
            runs.append(ReferenceRun(crops, i, [t.generated_ids for t in ref.turns], np.asarray(ref.ids), rec.logits))
    return runs


def compare_to_reference(runs: list[ReferenceRun], candidate: Session, images: list[Image.Image] | None = None,
                         question: str = QUESTION, max_new_tokens: int = 12) -> Deviation:
    """Run the candidate free and teacher-forced on the conversations `runs` recorded; see the module doc."""
    images = images or [fixed_image()]
    turns_equal, ids_equal, details = [], [], []
    same = total = 0
    errs, refmax, top1, positions, gaps = [], [], 0, 0, []
    for run in runs:
        image = images[run.image_index]
        cand = candidate.run(image, question, **_run_args(run.crops), sampler=_Recorder(),
                             max_new_tokens=max_new_tokens)
        for rt, ct in zip(run.turns, cand.turns):
            turns_equal.append(rt == ct.generated_ids)
            n = max(len(rt), len(ct.generated_ids))
            same += sum(a == b for a, b in zip(rt, ct.generated_ids))
            total += n
        ids_equal.append(len(run.turns) == len(cand.turns) and np.array_equal(run.ids, cand.ids))
        tokens = [t for turn in run.turns for t in turn]
        forced = _Forced(tokens)
        candidate.run(image, question, **_run_args(run.crops), sampler=forced, max_new_tokens=max_new_tokens)
        for r, c, t in zip(run.logits, forced.logits, tokens):
            errs.append(float(np.abs(r - c).max()))
            refmax.append(float(np.abs(r).max()))
            pick = int(np.argmax(c))
            top1 += int(pick == t)
            if pick != t:
                gaps.append(float(r[t] - r[pick]))
            positions += 1
        details.append({"crops": run.crops, "image": run.image_index, "reference_turns": run.turns,
                        "candidate_turns": [t.generated_ids for t in cand.turns]})
    max_err = max(errs) if errs else 0.0
    return Deviation(
        tokens_equal=all(turns_equal) and all(ids_equal), turns_equal=turns_equal,
        token_agreement=same / total if total else 1.0, top1_agreement=top1 / positions if positions else 1.0,
        max_abs_logit_err=max_err, rel_logit_err=max_err / max(max(refmax, default=1.0), 1e-12),
        positions=positions, flip_gaps=gaps, details=details)


def compare_sessions(reference: Session, candidate: Session, image: Image.Image | None = None,
                     question: str = QUESTION, crop_policies=None, max_new_tokens: int = 12) -> Deviation:
    """Both sessions on the fixed conversations (the reference first, then the candidate)."""
    images = [image or fixed_image()]
    runs = record_reference(reference, images, question, crop_policies, max_new_tokens)
    return compare_to_reference(runs, candidate, images, question, max_new_tokens)
