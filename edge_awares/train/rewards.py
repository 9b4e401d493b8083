"""GRPO rewards. AwaRes: R = R_ans − C_tool, with R_ans an answer score (sentence-embedding cosine by default;
ANLS, exact or relaxed match selectable) and C_tool = α_miss for an HR sample answered without a request,
α_use + λ·area for any request, 0 otherwise. ERGO (box policies): a region term (a judge answers correctly from
the crop alone), a box term (crop ≤ 60% of the image) and a format term. Pure functions; the TRL adapters live
in grpo.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import ConfigError


@dataclass(frozen=True)
class RewardConfig:
    """AwaRes reward constants (paper defaults). The requested area is summed over the crops fetched (each crop is
    encoded separately, so overlaps cost twice) and measured in `area_unit`: "percent" of the image (0-100, so a
    quadrant costs 0.25 + 0.01·25 = 0.5 and the whole image 1.25) or "fraction" (0-1, making λ·area negligible at
    λ = 0.01; the paper leaves the unit open)."""

    answer_metric: str = "embedding"
    alpha_miss: float = 2.0
    alpha_use: float = 0.25
    area_lambda: float = 0.01
    area_unit: str = "percent"

    def __post_init__(self):
        if self.area_unit not in ("percent", "fraction"):
            raise ConfigError(f"unknown area unit {self.area_unit!r}; legal: percent, fraction")


def requested_area(boxes: Sequence[Sequence[float]], width: int, height: int, unit: str = "percent") -> float:
    """Σ box area / image area over `boxes` (pixels, (l, t, r, b)), in percent (0-100 per box) or as a fraction."""
    if width <= 0 or height <= 0:
        raise ConfigError(f"image has no pixels ({width}x{height})")
    share = sum(max(0.0, x1 - x0) * max(0.0, y1 - y0) for x0, y0, x1, y1 in boxes) / float(width * height)
    return 100.0 * share if unit == "percent" else share


def tool_cost(hr: bool | None, requested: bool, area: float, cfg: RewardConfig) -> float:
    """C_tool: α_use + λ·area for any request; α_miss for an HR sample answered without one; else 0.
    `hr` None (label unknown) never costs a miss."""
    if requested:
        return cfg.alpha_use + cfg.area_lambda * area
    if hr:
        return cfg.alpha_miss
    return 0.0


def answer_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]], metric) -> list[float]:
    """R_ans per rollout: the metric's best score over the acceptable answers; 0 for an empty prediction (no
    answer given, e.g. a request left unserved), whatever the metric would say about an empty string."""
    batch = getattr(metric, "score_batch", None)
    if batch is not None:
        scores = batch([p or " " for p in predictions], [list(a) for a in answers])
    else:
        scores = [float(metric(p, list(a))) if a else 0.0 for p, a in zip(predictions, answers)]
    return [float(s) if p.strip() and a else 0.0 for s, p, a in zip(scores, predictions, answers)]


def awares_reward(answer_score: float, hr: bool | None, requested: bool, area: float,
                  cfg: RewardConfig) -> tuple[float, dict]:
    """R = R_ans − C_tool, and its parts."""
    cost = tool_cost(hr, requested, area, cfg)
    return answer_score - cost, {"answer": answer_score, "tool_cost": cost}


# ----------------------------------------------------------------------------------------------- ERGO
@dataclass(frozen=True)
class ErgoRewardConfig:
    """ERGO-style terms for box policies: the answer (weight 1), a format term, a region term (a frozen judge
    answers correctly from the crop alone) and a box term (the crop covers at most `max_area_share` of the image)."""

    answer_weight: float = 1.0
    format_weight: float = 1.0
    region_weight: float = 1.0
    box_weight: float = 0.5
    max_area_share: float = 0.6
    region_metric: str = "anls"
    region_threshold: float = 0.5  # a judge answer scoring at least this counts as correct

    def __post_init__(self):
        if not 0.0 < self.max_area_share <= 1.0:
            raise ConfigError(f"max_area_share={self.max_area_share} must be in (0, 1]")


def ergo_box_reward(box: Sequence[float] | None, width: int, height: int, max_share: float = 0.6) -> float:
    """1 if the requested box (original-image pixels) covers at most `max_share` of the image, else 0 (also 0
    without a box)."""
    if box is None:
        return 0.0
    return 1.0 if requested_area([box], width, height, "fraction") <= max_share + 1e-9 else 0.0


def ergo_region_reward(judge: Callable, crop_image, question: str, answers: Sequence[str], metric,
                       threshold: float = 0.5) -> float:
    """1 if `judge(crop_image, question)` (a frozen model that sees only the crop) answers correctly, else 0: the
    crop alone must hold the evidence."""
    if crop_image is None or not answers:
        return 0.0
    return 1.0 if float(metric(judge(crop_image, question), list(answers))) >= threshold else 0.0


def ergo_format_reward(turn_texts: Sequence[str], protocol, crop_set=None) -> float:
    """1 if the first turn names a box the protocol parses and the last turn gives an <answer>…</answer>."""
    if len(turn_texts) < 2:
        return 0.0
    from ..crops import AWARES_CROPS

    first = protocol.parse(turn_texts[0], crop_set or AWARES_CROPS)
    last = turn_texts[-1]
    return 1.0 if first.kind == "request" and "<answer>" in last and "</answer>" in last else 0.0


def ergo_reward(answer_score: float, region: float, box: float, fmt: float, cfg: ErgoRewardConfig) -> tuple[float, dict]:
    parts = {"answer": answer_score, "format": fmt, "region": region, "box": box}
    total = (cfg.answer_weight * answer_score + cfg.format_weight * fmt + cfg.region_weight * region
             + cfg.box_weight * box)
    return total, parts


class SessionJudge:
    """A judge for the region term: a frozen model answering from the crop alone, through the one loop (a single
    native pass over the crop, no further crops)."""

    def __init__(self, session, max_new_tokens: int = 32):
        self.session, self.max_new_tokens = session, max_new_tokens

    def __call__(self, crop_image, question: str) -> str:
        return self.session.run(crop_image, question, crops="none", view="native",
                                max_new_tokens=self.max_new_tokens).answer


__all__ = ["RewardConfig", "requested_area", "tool_cost", "answer_scores", "awares_reward", "ErgoRewardConfig",
           "ergo_box_reward", "ergo_region_reward", "ergo_format_reward", "ergo_reward", "SessionJudge"]
