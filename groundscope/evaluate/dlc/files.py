"""Reading DLC-Bench's files (qa.json, class_names.json, annotations.json, predictions; the layout is in the
package doc) into `Question`s and per-region maps, every malformed entry named by its file and place; and
where the recognition question's class names come from (`resolve_class_names`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groundscope.evaluate.dlc.questions import LETTERS, QUESTION_TYPES, RECOGNITION, Question
from groundscope.evaluate.validate import EvaluationInputError, load_json


def _is_score(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_question(raw: Any, source: str, where: str) -> Question:
    """One qa.json question entry -> `Question`; anything malformed names the file and ``region[k]``."""
    def bad(reason: str) -> EvaluationInputError:
        return EvaluationInputError(source, reason, where, raw)

    if not isinstance(raw, dict):
        raise bad("a question must be an object {question, choices, type}")
    missing = [k for k in ("question", "choices", "type") if k not in raw]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if not isinstance(raw["question"], str) or not raw["question"].strip():
        raise bad("question must be a non-empty string")
    kind = raw["type"]
    if kind == RECOGNITION:
        raise bad("type 'recognition' is not a qa.json type: the recognition question is built from the class "
                  "name (class_names.json); remove this entry")
    if kind not in QUESTION_TYPES:
        raise bad(f"type must be one of {', '.join(QUESTION_TYPES)}, got {kind!r}")
    choices = raw["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise bad(f"choices must be a list of 2 to {len(LETTERS)} [text, score] pairs")
    parsed = []
    for c in choices:
        if not (isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str) and c[0].strip()
                and _is_score(c[1])):
            raise bad(f"each choice must be [text, score] with a non-empty text and a finite number, got {c!r}")
        parsed.append((c[0], c[1]))
    subtype = raw.get("subtype")
    if subtype is not None and not isinstance(subtype, str):
        raise bad(f"subtype must be a string, got {subtype!r}")
    rule = raw.get("rule")
    if rule is not None and not (isinstance(rule, dict) and isinstance(rule.get("kind"), str)):
        raise bad(f"rule must be an object with a 'kind', got {rule!r}")
    return Question(raw["question"], tuple(parsed), kind, subtype, rule)


def parse_qa(data: Any, source: str = "<qa>") -> dict[str, list[Question]]:
    """qa.json's content -> region id -> its questions (file order). Every region needs a positive question:
    its Pos score is their mean."""
    if not isinstance(data, dict) or not data:
        raise EvaluationInputError(source, 'must be a non-empty object {"<region id>": [question, ...]}')
    qa = {}
    for region, questions in data.items():
        if not isinstance(questions, list) or not questions:
            raise EvaluationInputError(source, "must be a non-empty list of questions", repr(region),
                                       questions)
        parsed = [parse_question(q, source, f"{region!r}[{k}]") for k, q in enumerate(questions)]
        if not any(q.kind == "positive" for q in parsed):
            raise EvaluationInputError(source, "has no positive question; every region needs one (Pos is the "
                                       "mean of its positive scores)", repr(region))
        qa[str(region)] = parsed
    return qa


def read_qa(path: str | Path) -> dict[str, list[Question]]:
    """Read DLC-Bench's ``qa.json`` (format in the module doc)."""
    data, source = load_json(path, "<qa>")
    return parse_qa(data, source)


def read_class_names(path: str | Path) -> dict[str, str]:
    """Read ``class_names.json``: ``{"<region id>": "class name"}``."""
    data, source = load_json(path, "<class names>")
    if not isinstance(data, dict):
        raise EvaluationInputError(source, 'must be an object {"<region id>": "class name"}')
    for region, name in data.items():
        if not isinstance(name, str) or not name.strip():
            raise EvaluationInputError(source, "class name must be a non-empty string", repr(region), name)
    return {str(k): v.strip() for k, v in data.items()}


@dataclass
class DlcAnnotations:
    """What `read_annotations` takes from the COCO file: per region, its category name and its area."""

    class_names: dict[str, str]
    areas: dict[str, float]


def read_annotations(path: str | Path) -> DlcAnnotations:
    """Read DLC-Bench's ``annotations.json`` (COCO instances; region id = annotation ``id``).

    ``area`` is the annotation's ``area``, else its box's ``w * h``; the class name is its category's
    ``name`` (the fallback when there is no ``class_names.json``).
    """
    data, source = load_json(path, "<annotations>")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvaluationInputError(source, 'must be a COCO object with an "annotations" list')
    categories = {}
    for k, c in enumerate(data.get("categories") or []):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise EvaluationInputError(source, "a category needs an integer id and a string name",
                                       f"categories[{k}]", c)
        categories[c["id"]] = c["name"]
    names, areas = {}, {}
    for k, a in enumerate(data["annotations"]):
        where = f"annotations[{k}]"
        if not isinstance(a, dict) or not isinstance(a.get("id"), (int, str)) or isinstance(a.get("id"), bool):
            raise EvaluationInputError(source, "an annotation needs an id", where, a)
        region = str(a["id"])
        if "area" in a:
            if not _is_score(a["area"]) or a["area"] < 0:
                raise EvaluationInputError(source, "area must be a number >= 0", where, a)
            areas[region] = float(a["area"])
        elif "bbox" in a:
            box = a["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_is_score(v) for v in box)):
                raise EvaluationInputError(source, "bbox must be [x, y, w, h] numbers", where, a)
            areas[region] = float(box[2]) * float(box[3])
        if "category_id" in a:
            if a["category_id"] not in categories:
                raise EvaluationInputError(source, f"unknown category_id {a['category_id']!r}", where, a)
            names[region] = categories[a["category_id"]].strip().lower()
    return DlcAnnotations(class_names=names, areas=areas)


def read_predictions(path: str | Path) -> dict[str, str]:
    """Read a predictions file ``{"<region id>": "description"}`` (keys that are not regions are kept and
    ignored later; string values are checked for the regions being scored by `evaluate_dlc`)."""
    data, source = load_json(path, "<predictions>")
    if not isinstance(data, dict):
        raise EvaluationInputError(source, 'must be an object {"<region id>": "description"}, got '
                                   f"{type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def resolve_class_names(qa_path: Path, class_names: Path | None, annotations: DlcAnnotations | None
                        ) -> tuple[dict[str, str], str]:
    """Class names for the recognition question and where they came from: ``class_names`` when given, else
    ``class_names.json`` beside qa.json (DLC-Bench ships it there), else the annotations' category names."""
    if class_names is not None:
        return read_class_names(class_names), str(class_names)
    beside = qa_path.with_name("class_names.json")
    if beside.is_file():
        return read_class_names(beside), str(beside)
    if annotations is not None and annotations.class_names:
        return annotations.class_names, "annotations categories"
    raise EvaluationInputError(str(qa_path), "no class names for the recognition question: pass --class-names "
                               "class_names.json, put it beside qa.json, or pass --annotations with categories")
