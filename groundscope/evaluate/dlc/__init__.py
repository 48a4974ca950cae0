"""DLC-Bench: score detailed region descriptions (Describe Anything) by an LLM judge's multiple-choice answers.

DLC-Bench (``nvidia/DLC-Bench``) holds 100 regions with 392 positive and 500 negative questions. A model
writes one description per region; a text-only judge LLM then answers each question *from the description
alone*, and the chosen answer carries the score. This package follows the reference evaluator
(``evaluation/eval_model_outputs.py`` of NVlabs/describe-anything) rule for rule:

* **Recognition first.** Before a region's questions the judge is asked whether the description is about
  the region's class (``class_names.json``): "Is it likely that the object in the description is a wild
  bird or an object of a similar type? ..." with choices Yes / No. When the answer is No, every question
  of the region scores ``min(0, score)``: wrong details of a wrongly named object earn no credit, and
  negative scores (hallucinations) still count. A recognition reply that matches neither choice is an
  error, as in the reference.
* **Positive questions** ask for a detail the description should give. Choices score ``0`` (the part or
  object is not mentioned), ``0.5`` (mentioned, the attribute is not), ``-1`` (the attribute is stated
  wrongly), ``1`` (stated rightly); the scores are read from the question's choices, not assumed.
* **Negative questions** ask about something that is *not* in the region: ``1`` (not mentioned),
  ``-1`` (mentioned: a hallucination), ``0`` (the object itself is not mentioned).
* A reply that matches no choice scores ``0`` (treated as "not mentioned").
* **Per region**: ``pos`` = mean of its positive scores, ``neg`` = mean of its negative scores (``None``
  when it has none). **Pos** = mean of ``pos`` over all regions, **Neg** = mean of ``neg`` over the regions
  that have negatives, **Avg** = ``(Pos + Neg) / 2``. Every region weighs the same, whatever its number
  of questions. DAM-3B's published numbers: Pos 0.510, Neg 0.830, Avg 0.670 (Llama 3.1 8B Instruct judge).

Files (the DLC-Bench layout)::

    qa.json           {"<ann id>": [{"question": str, "choices": [[text, score], ...],
                                     "type": "positive" | "negative", "subtype"?: str}, ...], ...}
    class_names.json  {"<ann id>": "wild bird", ...}       the class the recognition question asks about
    annotations.json  COCO instances of the regions (area for the small-object subset; category names
                      stand in for class_names.json when that file is not there)
    predictions       {"<ann id>": "description", ...}     other keys (the reference's "query") are ignored

Judges (`Judge`): `OpenAIJudge` (any OpenAI-compatible server, e.g. vLLM serving Llama 3.1 8B Instruct as
the reference does), `LocalJudge` (a transformers causal LM, the choice letter with the highest logit) and
`RuleJudge` (exact word rules, for the synthetic world's questions from `synthetic_bench`). A judge only
returns its reply text; `parse_choice` maps every judge's reply to a choice the same way.

Modules, each importing only those above it:

    questions   the `Question` model, its kinds and letters, the recognition question
    judging     what every judge shares: `Judge`, `DlcJudgeError`, the reference prompt, `parse_choice`
    files       the readers of qa.json, class_names.json, annotations.json and predictions
    scoring     a region's Pos / Neg, the recognition cap, the benchmark's Pos / Neg / Avg
    synthetic   the synthetic world's questions and benchmark (`synthetic_bench`)
    rules       `RuleJudge`, which answers the synthetic questions by exact words
    judges      `OpenAIJudge`, `LocalJudge` and `make_judge`
    evaluation  `evaluate_dlc`, one benchmark run
    cache       the judge reply cache that lets an interrupted run resume
"""

from __future__ import annotations

from groundscope.evaluate.dlc.cache import load_cache, save_cache
from groundscope.evaluate.dlc.evaluation import evaluate_dlc
from groundscope.evaluate.dlc.files import (
    DlcAnnotations,
    parse_qa,
    parse_question,
    read_annotations,
    read_class_names,
    read_predictions,
    read_qa,
    resolve_class_names,
)
from groundscope.evaluate.dlc.judges import JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE, LocalJudge, OpenAIJudge, make_judge
from groundscope.evaluate.dlc.judging import PROMPT, DlcJudgeError, Judge, build_prompt, parse_choice
from groundscope.evaluate.dlc.questions import (
    LETTERS,
    NOT_RECOGNISED,
    QUESTION_TYPES,
    RECOGNISED,
    RECOGNITION,
    Question,
    plural,
    recognition_question,
)
from groundscope.evaluate.dlc.rules import RELATION_WORDS, RuleJudge, description_subject, stated_relations
from groundscope.evaluate.dlc.scoring import (
    SMALL_AREA,
    DlcResult,
    DlcSummary,
    RegionScore,
    cap,
    question_score,
    score_region,
    summarise,
)
from groundscope.evaluate.dlc.synthetic import QUESTION, DlcBench, region_questions, scene_objects, synthetic_bench

__all__ = [
    "JUDGE_MAX_TOKENS", "JUDGE_TEMPERATURE", "LETTERS", "NOT_RECOGNISED", "PROMPT", "QUESTION", "QUESTION_TYPES",
    "RECOGNISED", "RECOGNITION", "RELATION_WORDS", "SMALL_AREA", "DlcAnnotations", "DlcBench", "DlcJudgeError",
    "DlcResult", "DlcSummary", "Judge", "LocalJudge", "OpenAIJudge", "Question", "RegionScore", "RuleJudge",
    "build_prompt", "cap", "description_subject", "evaluate_dlc", "load_cache", "make_judge", "parse_choice",
    "parse_qa", "parse_question", "plural", "question_score", "read_annotations", "read_class_names",
    "read_predictions", "read_qa", "recognition_question", "region_questions", "resolve_class_names", "save_cache",
    "scene_objects", "score_region", "stated_relations", "summarise", "synthetic_bench",
]
