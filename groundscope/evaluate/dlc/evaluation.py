"""`evaluate_dlc`: one benchmark run. Every description is checked first; then, region by region, the
recognition question and the region's own questions are put to a judge (or their replies read from a cache of
an earlier run), each reply mapped to a choice, and the choices scored (the rules are in the package doc)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from groundscope.evaluate.dlc.judging import DlcJudgeError, Judge, parse_choice
from groundscope.evaluate.dlc.questions import NOT_RECOGNISED, RECOGNISED, RECOGNITION, Question, recognition_question
from groundscope.evaluate.dlc.scoring import (
    SMALL_AREA,
    DlcResult,
    RegionScore,
    cap,
    question_score,
    score_region,
    summarise,
)
from groundscope.evaluate.validate import EvaluationInputError, _excerpt


def _recognised(question: Question, index: int | None, reply: str, region: str) -> bool:
    value = question_score(question, index)
    if value == RECOGNISED:
        return True
    if value == NOT_RECOGNISED:
        return False
    raise DlcJudgeError(f"region {region}: the judge's reply to the recognition question matches neither Yes "
                        f"nor No: {_excerpt(reply)} (the reference stops here too; check the judge model)")


def evaluate_dlc(
    descriptions: Mapping[str, Any],
    qa: Mapping[str, Sequence[Question]],
    judge: Judge,
    *,
    class_names: Mapping[str, str] | None = None,
    areas: Mapping[str, float] | None = None,
    small_area: float = SMALL_AREA,
    default_prediction: str | None = None,
    cache: MutableMapping[str, dict] | None = None,
    on_region: Callable[[str, RegionScore], None] | None = None,
    progress: bool = False,
    source: str = "<predictions>",
) -> DlcResult:
    """Score `descriptions` on the regions of `qa` with `judge` (rules in the module doc).

    Args:
        descriptions: region id -> description (keys not in `qa` are ignored).
        qa: region id -> questions (`read_qa`, `synthetic_bench`).
        judge: any `Judge`.
        class_names: region id -> class for the recognition question. Without it (``None``) no recognition
            question is asked and nothing is capped, which is *not* the reference protocol.
        areas: region id -> area in px², for the small-object subset (area < `small_area`).
        default_prediction: stands in for a missing description or one starting with "Error:" (as the
            reference's ``--default-prediction``); without it those are errors.
        cache: region id -> ``{"pred", "responses"}`` from an earlier run: a region whose description and
            question count match reuses the replies instead of asking the judge; filled in as regions finish.
        on_region: called after each region (e.g. to save `cache`).
        progress: show a tqdm bar over regions on stderr.
        source: the predictions' name in error messages.
    """
    if class_names is not None:
        missing = [r for r in qa if r not in class_names]
        if missing:
            raise EvaluationInputError("<class names>", f"no class name for {len(missing)} region(s) of qa.json, "
                                       f"e.g. {missing[:3]}; give class_names.json of the same benchmark")
    # Every description is checked before the first judge call: a bad one found after an hour of judging
    # would waste the hour.
    texts = {}
    for region in qa:
        description = descriptions.get(region)
        if description is None or (isinstance(description, str) and description.startswith("Error:")):
            if default_prediction is None:
                what = ("no description" if description is None
                        else f"an error instead of a description ({description[:80]!r})")
                raise EvaluationInputError(source, f"{what} for region {region}; describe every region of "
                                           f"qa.json or pass a default prediction (--default-prediction)")
            description = default_prediction
        if not isinstance(description, str):
            raise EvaluationInputError(source, "description must be a string", repr(region), description)
        texts[region] = description
    from tqdm import tqdm

    per_region: dict[str, RegionScore] = {}
    for region in tqdm(list(qa), desc="DLC-Bench regions", unit="region", disable=not progress, file=sys.stderr):
        description = texts[region]
        questions = list(qa[region])
        if class_names is not None:
            questions.insert(0, recognition_question(class_names[region]))
        cached = (cache or {}).get(region)
        reuse = (isinstance(cached, dict) and cached.get("pred") == description
                 and isinstance(cached.get("responses"), list) and len(cached["responses"]) == len(questions)
                 and all(isinstance(r, str) for r in cached["responses"]))
        replies = []
        recognised: bool | None = None
        positives, negatives, answers = [], [], []
        for k, q in enumerate(questions):
            reply = cached["responses"][k] if reuse else judge.reply(description, q)
            replies.append(reply)
            index = parse_choice(reply, [t for t, _ in q.choices])
            if q.kind == RECOGNITION:
                recognised = _recognised(q, index, reply, region)
                value: Any = RECOGNISED if recognised else NOT_RECOGNISED
            else:
                raw = question_score(q, index)
                (positives if q.kind == "positive" else negatives).append(raw)
                value = cap(raw, recognised)
            answers.append({"question": q.text, "type": q.kind, "subtype": q.subtype,
                            "choices": [[t, v] for t, v in q.choices], "reply": reply, "index": index,
                            "score": value})
        result = score_region(positives, negatives, recognised)
        result.answers = answers
        per_region[region] = result
        if cache is not None:
            cache[region] = {"pred": description, "responses": replies}
        if on_region is not None:
            on_region(region, result)
    summary = summarise(per_region.values())
    small = None
    if areas:
        chosen = [s for r, s in per_region.items() if r in areas and areas[r] < small_area]
        small = summarise(chosen) if chosen else None
    return DlcResult(pos=summary.pos, neg=summary.neg, avg=summary.avg, per_region=per_region,
                     small_objects=small, summary=summary, small_area=small_area)
