"""Policy evaluation through the one loop (Session): accuracy, request and parse rates, RTR, crop-id histogram on a
validation split. Training runs call it between steps on the model being trained, so the
figures are those the runtime would produce.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..images import load_image
from ..session import Sampler, Session


@dataclass(frozen=True)
class EvalItem:
    """One validation question: image path, question, acceptable answers, whether it needs detail (HR), and the
    evidence box where the data has one."""

    id: str
    image: str
    question: str
    answers: tuple[str, ...]
    hr: bool | None
    evidence_box: tuple[float, float, float, float] | None = None


def evaluate_session(session: Session, items: list[EvalItem], metric, max_new_tokens: int | None = None,
                     prefix: str = "val/") -> dict:
    """Greedy Session runs over `items`; returns flat metrics named `prefix + name`, built by the one aggregation
    `edge-awares eval` uses (edge_awares.evaluate.summarize; see EvalReport for every figure's definition)."""
    from ..evaluate import session_record, summarize

    if not items:
        return {}
    records = []
    for it in items:
        image = load_image(it.image)
        t0 = time.perf_counter()
        r = session.run(image, it.question, sampler=Sampler(), max_new_tokens=max_new_tokens)
        ms = (time.perf_counter() - t0) * 1e3
        score = metric(r.answer, list(it.answers)) if it.answers else 0.0
        records.append(session_record(it.id, it.question, it.answers, r, score, ms, needs_detail=it.hr,
                                      evidence_box=it.evidence_box))
    return summarize(records).flat(prefix)


__all__ = ["EvalItem", "evaluate_session"]
