"""Policy evaluation through the one loop (Session): accuracy, request rate, RTR, crop-id histogram and parse
failures on a validation split. Training runs call it between steps on the model being trained, so the
figures are those the runtime would produce.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..images import load_image
from ..session import Sampler, Session


@dataclass(frozen=True)
class EvalItem:
    """One validation question: image path, question, acceptable answers, and whether it needs detail (HR)."""

    id: str
    image: str
    question: str
    answers: tuple[str, ...]
    hr: bool | None


def evaluate_session(session: Session, items: list[EvalItem], metric, max_new_tokens: int = 32,
                     prefix: str = "val/") -> dict:
    """Greedy Session runs over `items`; returns flat metrics named `prefix + name`.

    accuracy (mean metric), request_rate (share of runs that asked for crops), hr/lr request rates where labels are
    known, rtr (true retained-token ratio), parse_failures (per run), crops/<id> (share of runs fetching the crop).
    """
    if not items:
        return {}
    scores, requested, rtrs, failures = [], [], [], 0
    by_label = {True: [], False: []}
    crops = Counter()
    for it in items:
        r = session.run(load_image(it.image), it.question, sampler=Sampler(), max_new_tokens=max_new_tokens)
        scores.append(float(metric(r.answer, list(it.answers))) if it.answers else 0.0)
        requested.append(r.requested)
        rtrs.append(r.rtr)
        failures += r.parse_failures
        crops.update(set(r.crops))
        if it.hr is not None:
            by_label[bool(it.hr)].append(r.requested)
    n = len(items)
    out = {"accuracy": sum(scores) / n, "request_rate": sum(requested) / n, "rtr": sum(rtrs) / n,
           "parse_failures": failures / n, "n": n}
    for label, name in ((True, "hr_request_rate"), (False, "lr_request_rate")):
        if by_label[label]:
            out[name] = sum(by_label[label]) / len(by_label[label])
    for cid, k in sorted(crops.items()):
        out[f"crops/{cid}"] = k / n
    return {prefix + k: v for k, v in out.items()}


__all__ = ["EvalItem", "evaluate_session"]
