"""The scoring rule: the score of a chosen choice, the recognition cap, one region's Pos / Neg
(`RegionScore`), and the benchmark's Pos / Neg / Avg over regions (`DlcSummary`, `DlcResult`, the small-object
subset)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from groundscope.evaluate.dlc.questions import Question

SMALL_AREA = 32.0**2  # COCO's "small": DLC-Bench defines no size split, so the usual one


@dataclass
class RegionScore:
    """The scores of one region.

    Attributes:
        pos: mean of the positive question scores (after the recognition cap).
        neg: mean of the negative question scores, ``None`` when the region has no negative question.
        score: mean over all its positive and negative scores together (the reference's per-region "score").
        recognised: the judge's recognition answer (``None`` when no recognition question was asked).
        positives, negatives: each question's score, in qa order, after the cap.
        answers: per question asked (recognition first): question, choices, reply, chosen index, score.
    """

    pos: float
    neg: float | None
    score: float
    recognised: bool | None
    positives: list[float]
    negatives: list[float]
    answers: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"pos": self.pos, "neg": self.neg, "score": self.score, "recognised": self.recognised,
                "positives": self.positives, "negatives": self.negatives, "answers": self.answers}


def question_score(question: Question, index: int | None) -> float | str:
    """The value of the chosen choice; ``0`` when the reply picked none (counted as "not mentioned")."""
    if index is None:
        return 0
    return question.choices[index][1]


def cap(score: float, recognised: bool | None) -> float:
    """The recognition cap: a region whose object was not recognised keeps at most 0 on each question."""
    return min(0, score) if recognised is False else score


def score_region(positives: Sequence[float], negatives: Sequence[float], recognised: bool | None = True
                 ) -> RegionScore:
    """Per-region scores from the raw (uncapped) question scores and the recognition answer."""
    if not positives:
        raise ValueError("a region needs at least one positive question score")
    pos_scores = [cap(s, recognised) for s in positives]
    neg_scores = [cap(s, recognised) for s in negatives]
    both = pos_scores + neg_scores
    return RegionScore(pos=sum(pos_scores) / len(pos_scores),
                       neg=sum(neg_scores) / len(neg_scores) if neg_scores else None,
                       score=sum(both) / len(both), recognised=recognised,
                       positives=pos_scores, negatives=neg_scores)


@dataclass
class DlcSummary:
    """Pos / Neg / Avg over a set of regions; ``neg`` and ``avg`` are ``None`` when none has negatives."""

    pos: float
    neg: float | None
    avg: float | None
    regions: int
    positive_questions: int
    negative_questions: int

    def as_dict(self) -> dict:
        return {"pos": self.pos, "neg": self.neg, "avg": self.avg, "regions": self.regions,
                "positive_questions": self.positive_questions, "negative_questions": self.negative_questions}


def summarise(regions: Iterable[RegionScore]) -> DlcSummary:
    """Pos = mean of the regions' ``pos``; Neg = mean of ``neg`` over regions that have negatives; Avg =
    their mean. Each region counts once, however many questions it has."""
    regions = list(regions)
    if not regions:
        raise ValueError("no regions to summarise")
    pos = sum(r.pos for r in regions) / len(regions)
    negs = [r.neg for r in regions if r.neg is not None]
    neg = sum(negs) / len(negs) if negs else None
    return DlcSummary(pos=pos, neg=neg, avg=(pos + neg) / 2 if neg is not None else None, regions=len(regions),
                      positive_questions=sum(len(r.positives) for r in regions),
                      negative_questions=sum(len(r.negatives) for r in regions))


@dataclass
class DlcResult:
    """`evaluate_dlc`'s result.

    Attributes:
        pos, neg, avg: the benchmark's three numbers (`summarise`).
        per_region: region id -> `RegionScore`, in qa order.
        small_objects: the same numbers over regions with area < ``small_area`` (``None`` when no area is
            known or no region is that small).
        summary: all regions' `DlcSummary` (question counts included).
    """

    pos: float
    neg: float | None
    avg: float | None
    per_region: dict[str, RegionScore]
    small_objects: DlcSummary | None
    summary: DlcSummary
    small_area: float = SMALL_AREA

    def as_dict(self) -> dict:
        return {"pos": self.pos, "neg": self.neg, "avg": self.avg, "regions": self.summary.regions,
                "positive_questions": self.summary.positive_questions,
                "negative_questions": self.summary.negative_questions,
                "small_area": self.small_area,
                "small_objects": None if self.small_objects is None else self.small_objects.as_dict(),
                "per_region": {k: r.as_dict() for k, r in self.per_region.items()}}
