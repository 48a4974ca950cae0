"""DLC-Bench: score detailed region descriptions (Describe Anything) by an LLM judge's multiple-choice answers.

DLC-Bench (``nvidia/DLC-Bench``) holds 100 regions with 392 positive and 500 negative questions. A model
writes one description per region; a text-only judge LLM then answers each question *from the description
alone*, and the chosen answer carries the score. This module follows the reference evaluator
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
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from groundscope.data.captions import neighbours
from groundscope.data.records import ImageRecord
from groundscope.data.scene import RELATIONS, SceneObject, relation_holds
from groundscope.data.vocab import COLOUR_NAMES, SHAPES, SIZE_NAMES, TEXTURES
from groundscope.evaluate.validate import EvaluationInputError, _excerpt, load_json

QUESTION_TYPES = ("positive", "negative")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SMALL_AREA = 32.0**2  # COCO's "small": DLC-Bench defines no size split, so the usual one
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 300  # the reference's limit; a compliant judge answers in a handful of tokens
RECOGNITION = "recognition"
RECOGNISED, NOT_RECOGNISED = "correct", "incorrect"

# The reference's judge prompt, word for word: judges were tuned and numbers published with it.
PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. \
You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices \
for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{description}

From the description above, please answer the following question with one of the choices:
{question}
"""


class DlcJudgeError(RuntimeError):
    """A judge that cannot answer: server unreachable or refusing, an unusable reply, a model without letters."""


# ----------------------------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about a region, as qa.json stores it.

    Attributes:
        text: the question ("Which of the following is applicable to the description?").
        choices: ``(text, value)`` pairs in letter order A, B, ...; the value is the score (a number), or
            ``"correct"`` / ``"incorrect"`` for the recognition question.
        kind: ``"positive"``, ``"negative"`` or ``"recognition"`` (qa.json's ``type``).
        subtype: qa.json's optional ``subtype`` ("negative part", "salient negative", ...).
        rule: what a synthetic-world question checks, for `RuleJudge` (``{"kind": "colour", "value":
            "red"}``); ``None`` for DLC-Bench's own questions. LLM judges never see it.
    """

    text: str
    choices: tuple[tuple[str, float | str], ...]
    kind: str
    subtype: str | None = None
    rule: Mapping[str, Any] | None = None

    def as_dict(self) -> dict:
        """The qa.json entry (``rule`` only when set)."""
        out: dict[str, Any] = {"question": self.text, "choices": [[t, v] for t, v in self.choices],
                               "type": self.kind}
        if self.subtype is not None:
            out["subtype"] = self.subtype
        if self.rule is not None:
            out["rule"] = dict(self.rule)
        return out


def _article(noun: str) -> str:
    """"a" or "an" before `noun` by its sound (the common exceptions of English spelling included)."""
    word = noun.strip().lower()
    if re.match(r"(hour|honest|honou?r|heir)", word):
        return "an"
    if re.match(r"(uni|use|usu|ura|euro|eu|one|once|ubiq|ute)", word):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


_IRREGULAR_PLURALS = {"people", "children", "men", "women", "mice", "geese", "feet", "teeth", "sheep", "fish",
                      "deer", "cattle", "police", "scissors", "glasses", "pants", "trousers", "jeans", "shorts"}
_SINGULAR_S = ("ss", "us", "is", "ous", "ics")


def _is_plural(name: str) -> bool:
    """Whether the class name's head noun is plural ("pants" yes, "bus", "glass" no). The reference asks the
    `inflect` package, used here when installed; otherwise a suffix rule that agrees on ordinary nouns."""
    head = name.strip().split()[-1].lower() if name.strip() else ""
    if head == "bus":  # the reference's own exception to inflect
        return False
    try:
        import inflect  # optional: not a dependency
    except ImportError:
        if head in _IRREGULAR_PLURALS:
            return True
        return head.endswith("s") and not head.endswith(_SINGULAR_S)
    return inflect.engine().singular_noun(name) is not False


def _with_article(name: str) -> str:
    try:
        import inflect
    except ImportError:
        return f"{_article(name)} {name}"
    return inflect.engine().a(name)


def recognition_question(class_name: str, rule: Mapping[str, Any] | None = None) -> Question:
    """The question asked before a region's own: is the description about a `class_name`? (Yes / No)."""
    if _is_plural(class_name):
        text = (f"Is it likely that the objects in the description are {class_name} or objects of a similar "
                f"type? Again, It does not have to be an exact match.")
    else:
        text = (f"Is it likely that the object in the description is {_with_article(class_name)} or an object "
                f"of a similar type? Again, It does not have to be an exact match.")
    return Question(text, (("Yes", RECOGNISED), ("No", NOT_RECOGNISED)), RECOGNITION,
                    rule=rule if rule is not None else {"kind": RECOGNITION, "value": class_name})


def build_prompt(description: str, question: Question) -> str:
    """The judge prompt: the description, then the question and its lettered choices."""
    lines = [question.text] + [f"{LETTERS[k]}. {text}" for k, (text, _) in enumerate(question.choices)]
    return PROMPT.format(description=description, question="\n".join(lines).strip())


def parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """Which choice a judge's reply picks (index), or ``None`` when it picks none.

    Judges answer "B", "B. The colour ...", the choice text alone, or a sentence around it. In order (the
    reference's order, so a reply maps to the same choice as there):

    1. the reply is a letter, a choice's text, or ``"<letter>. <text>"`` (case-insensitive);
    2. exactly one choice's text occurs in the reply;
    3. the reply starts with ``"<letter>."``;
    4. several choices' texts occur: the one that starts last (the final answer of a reply that restates
       choices), the longest of those starting at the same place;
    5. the reply occurs inside choices' texts: the longest such choice;
    6. the reply is one letter, or one letter and a line break.
    """
    pred = reply.strip().lower()
    if not pred:
        return None
    texts = [c.strip().lower() for c in choices]
    letters = LETTERS[: len(texts)].lower()
    for k, text in enumerate(texts):
        if pred in (text, f"{letters[k]}. {text}", letters[k]):
            return k
    found = [(k, pred.index(text), len(text)) for k, text in enumerate(texts) if text and text in pred]
    if len(found) == 1:
        return found[0][0]
    if len(pred) >= 2 and pred[1] == "." and pred[0] in letters:
        return letters.index(pred[0])
    if found:
        last = max(start for _, start, _ in found)
        return max((f for f in found if f[1] == last), key=lambda f: f[2])[0]
    inside = [(k, len(text)) for k, text in enumerate(texts) if pred in text]
    if inside:
        return max(inside, key=lambda m: m[1])[0]
    if pred[0] in letters and (len(pred) == 1 or pred[1] == "\n"):
        return letters.index(pred[0])
    return None


# ----------------------------------------------------------------------------------------------- readers


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


# ----------------------------------------------------------------------------------------------- scoring


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


# ----------------------------------------------------------------------------------------------- judges


class Judge(Protocol):
    """Answers one multiple-choice question from a description; returns the reply text (`parse_choice`
    maps it to a choice). ``name`` identifies the judge in reports and response caches."""

    name: str

    def reply(self, description: str, question: Question) -> str: ...


class OpenAIJudge:
    """An instruction LLM behind an OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp server,
    OpenAI ...), asked as the reference asks: one user message with `build_prompt`, temperature 0,
    top_p 1, at most 300 tokens.

    Args:
        url: the server, ``http://host:port``; a trailing ``/v1`` or the full ``.../chat/completions`` works too.
        model: the served model name (``meta-llama/Meta-Llama-3.1-8B-Instruct`` for the reference numbers).
        api_key: sent as ``Authorization: Bearer``; local servers usually need none.
        timeout: seconds per request.
        retries: further tries after a connection error, a timeout, 429 or 5xx, waiting ``backoff * 2**k`` s.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 retries: int = 3, backoff: float = 2.0, max_tokens: int = JUDGE_MAX_TOKENS) -> None:
        if not re.match(r"https?://", url):
            raise ValueError(f"judge url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        if base.endswith("/chat/completions"):
            self.endpoint = base
        elif base.endswith("/v1"):
            self.endpoint = base + "/chat/completions"
        else:
            self.endpoint = base + "/v1/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.name = f"openai:{model}@{self.endpoint}"

    def request_body(self, prompt: str) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": JUDGE_TEMPERATURE, "max_tokens": self.max_tokens, "top_p": 1,
                "frequency_penalty": 0, "presence_penalty": 0}

    def reply(self, description: str, question: Question) -> str:
        body = json.dumps(self.request_body(build_prompt(description, question))).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if (e.code == 429 or e.code >= 500) and attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise DlcJudgeError(f"judge {self.endpoint} answered HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise DlcJudgeError(f"cannot reach the judge at {self.endpoint}: {reason} (is the server up? "
                                    f"check --judge-url)") from None
        try:
            return json.loads(payload)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            text = payload[:300].decode("utf-8", "replace")
            raise DlcJudgeError(f"judge {self.endpoint} sent no chat completion (choices[0].message.content): "
                                f"{text}") from None


class LocalJudge:
    """A transformers causal LM as judge, deterministic: the prompt (through the tokenizer's chat template
    when it has one) is run once and the reply is the choice letter whose token has the highest next-token
    logit, among the question's letters only (greedy decoding restricted to a valid answer; ties go to the
    earlier letter). A letter's logit is the larger of its bare and space-prefixed tokens ("A", " A").

    Args:
        model_path: a local model directory (or hub id, where the hub is reachable).
        device: ``cpu``, ``cuda`` ...
        dtype: torch dtype name (``bfloat16``) or ``None`` for the checkpoint's default.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", dtype: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
            self.model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs).to(device).eval()
        except (OSError, ValueError, AttributeError) as e:
            raise DlcJudgeError(f"cannot load judge model {str(model_path)!r}: {e}") from None
        self.device = device
        self.name = f"local:{model_path}"
        self._letter_ids: list[list[int]] = []

    def letter_token_ids(self, n: int) -> list[list[int]]:
        """Candidate token ids of letters A.. (first ``n``); letters that share a token cannot be told apart."""
        while len(self._letter_ids) < n:
            letter = LETTERS[len(self._letter_ids)]
            ids = set()
            for text in (letter, " " + letter):
                tokens = self.tokenizer.encode(text, add_special_tokens=False)
                if tokens:
                    ids.add(tokens[0])
            self._letter_ids.append(sorted(ids))
        out = self._letter_ids[:n]
        seen: dict[int, str] = {}
        for k, ids in enumerate(out):
            for i in ids:
                if i in seen and seen[i] != LETTERS[k]:
                    raise DlcJudgeError(f"judge tokenizer maps letters {seen[i]} and {LETTERS[k]} to the same "
                                        f"token {i}; choose a judge model whose tokenizer keeps letters apart")
                seen[i] = LETTERS[k]
        return out

    def _encode(self, prompt: str):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            return {k: v.to(self.device) for k, v in ids.items()}
        return {k: v.to(self.device) for k, v in tok(prompt, return_tensors="pt").items()}

    def reply(self, description: str, question: Question) -> str:
        letters = self.letter_token_ids(len(question.choices))
        with self.torch.inference_mode():
            logits = self.model(**self._encode(build_prompt(description, question))).logits[0, -1].float()
        scores = [max(float(logits[i]) for i in ids) for ids in letters]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        return LETTERS[best]


# ----------------------------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------------------------- synthetic world
#
# Questions about the synthetic world's regions in DLC-Bench's structure, built from the attributes the
# renderer drew, so a judge can be checked where the right answer is known. Each carries a `rule` that
# `RuleJudge` answers by exact words. The object's own attributes are read from the description's *subject*:
# its first sentence up to the first relation word ("left of", "above", "behind" ...), because the rest of a
# description names the neighbours' colours and shapes ("It is left of the large green star").

QUESTION = "Which of the following is applicable to the description?"
RELATION_WORDS = (*RELATIONS, "next to")
_SUBJECT_END = re.compile(r"\b(?:left of|right of|above|below|next to|behind|covers|covering|near|beside|"
                          r"under|over|on top of)\b")
_ATTRIBUTES = {"colour": COLOUR_NAMES, "shape": SHAPES, "size": SIZE_NAMES, "pattern": TEXTURES}
_NOUN = {"colour": "colour", "shape": "shape", "size": "size", "pattern": "pattern"}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _value_words(attribute: str, value: str) -> str:
    return f"{_article(value)} {value}" if attribute == "shape" else value


def _positive(attribute: str, value: str, obj: Mapping[str, str]) -> Question:
    noun = _NOUN[attribute]
    said = _value_words(attribute, value)
    choices = (
        ("The object is not mentioned.", 0),
        (f"The {noun} of the object is not mentioned, but the object is mentioned.", 0.5),
        (f"The {noun} of the object is mentioned in the description but is not {said}.", -1),
        (f"The {noun} of the object is mentioned in the description and is {said}.", 1),
    )
    return Question(QUESTION, choices, "positive", attribute,
                    {"kind": attribute, "value": value, "object": dict(obj)})


def _relation_question(target: SceneObject, holds: list[str], obj: Mapping[str, str]) -> Question:
    name = f"the {target.size} {target.colour} {target.shape}"
    said = " or ".join(holds)
    choices = (
        ("The object is not mentioned.", 0),
        (f"The position of the object relative to {name} is not mentioned, but the object is mentioned.", 0.5),
        (f"The position of the object relative to {name} is mentioned in the description but is not {said} it.",
         -1),
        (f"The position of the object relative to {name} is mentioned in the description and is {said} it.", 1),
    )
    rule = {"kind": "relation", "holds": holds, "object": dict(obj),
            "target": {"size": target.size, "colour": target.colour, "shape": target.shape}}
    return Question(QUESTION, choices, "positive", "relation", rule)


def _wrong_colour_question(colour: str, obj: Mapping[str, str]) -> Question:
    choices = ((f"The object is not described as {colour}.", 1), (f"The object is described as {colour}.", -1),
               ("The object is not mentioned in the description.", 0))
    return Question(QUESTION, choices, "negative", "wrong colour",
                    {"kind": "wrong colour", "value": colour, "object": dict(obj)})


def _absent_shape_question(shape: str, obj: Mapping[str, str]) -> Question:
    name = plural(shape).capitalize()
    choices = ((f"{name} are not mentioned in the description.", 1), (f"{name} are mentioned in the description.", -1))
    return Question(QUESTION, choices, "negative", "absent shape",
                    {"kind": "absent shape", "value": shape, "object": dict(obj)})


def scene_objects(record: ImageRecord, source: str = "<scene>") -> list[SceneObject]:
    """The `SceneObject`s of a synthetic world's record (COCO ``coco.json`` / ``coco_all.json`` keep each
    object's colour, shape, size, texture and side in ``attributes``)."""
    objects = []
    for k, inst in enumerate(record.instances):
        a = inst.attributes or {}
        missing = [key for key in ("colour", "shape", "size", "texture") if key not in a]
        if missing:
            raise EvaluationInputError(source, f"instance has no {', '.join(missing)} attribute(s); synthetic "
                                       "questions need a synthetic world's COCO file (coco.json / coco_all.json)",
                                       f"{record.filename} instance {k}")
        objects.append(SceneObject(colour=a["colour"], shape=a["shape"], size=a["size"], texture=a["texture"],
                                   side=int(a.get("side", 0)), box=tuple(inst.bbox),
                                   full_box=tuple(a.get("full_bbox", inst.bbox))))
    return objects


def _region_id(record: ImageRecord, k: int) -> str:
    inst = record.instances[k]
    return str(inst.id) if inst.id is not None else f"{record.image_id or record.filename}:{k}"


def region_questions(index: int, objects: Sequence[SceneObject]) -> list[Question]:
    """Questions about ``objects[index]``: positives on its colour, shape, pattern, size and one relation (to
    the nearer of its two nearest neighbours that lies clearly to one side of it and has no twin of the same
    size, colour and shape; none when neither does); negatives claiming the colour of the nearest
    differently coloured object (the next vocabulary colour when there is none) and a shape absent from the
    scene (none when all eight are present). Deterministic."""
    o = objects[index]
    obj = {"colour": o.colour, "shape": o.shape, "size": o.size, "texture": o.texture}
    questions = [_positive("colour", o.colour, obj), _positive("shape", o.shape, obj),
                 _positive("pattern", o.texture, obj), _positive("size", o.size, obj)]
    # The two nearest neighbours, the ones a description places the object against (`captions.describe`).
    for j in neighbours(index, objects, k=2):
        t = objects[j]
        # A neighbour with a twin (same size, colour and shape) could be either of two objects: skip it.
        twins = [i for i, u in enumerate(objects) if (u.size, u.colour, u.shape) == (t.size, t.colour, t.shape)]
        holds = [r for r in RELATIONS if relation_holds(r, o, t)]
        if holds and len(twins) == 1:
            questions.append(_relation_question(t, holds, obj))
            break
    order = neighbours(index, objects, k=len(objects))
    wrong = next((objects[j].colour for j in order if objects[j].colour != o.colour), None)
    if wrong is None:  # a lone object, or only same-coloured neighbours: the next colour of the vocabulary
        wrong = COLOUR_NAMES[(COLOUR_NAMES.index(o.colour) + 1) % len(COLOUR_NAMES)]
    questions.append(_wrong_colour_question(wrong, obj))
    present = {u.shape for u in objects}
    start = SHAPES.index(o.shape)
    absent = [SHAPES[(start + 1 + k) % len(SHAPES)] for k in range(len(SHAPES))]
    absent = [s for s in absent if s not in present]
    if absent:
        questions.append(_absent_shape_question(absent[0], obj))
    return questions


@dataclass
class DlcBench:
    """A DLC-Bench-shaped benchmark in memory: qa, class names, areas, and reference descriptions.

    ``descriptions`` are the records' own region descriptions (what a perfect describer writes), handy as
    predictions to check a judge: with `RuleJudge` they score Pos = Neg = 1.
    """

    qa: dict[str, list[Question]]
    class_names: dict[str, str]
    areas: dict[str, float]
    descriptions: dict[str, str]
    image_of: dict[str, str] = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write qa.json, class_names.json, annotations.json (minimal COCO) and descriptions.json."""
        from groundscope.evaluate.report import write_json

        out = Path(out_dir)
        images = sorted(set(self.image_of.values()))
        image_ids = {name: k + 1 for k, name in enumerate(images)}
        cats = sorted(set(self.class_names.values()))
        cat_ids = {name: k + 1 for k, name in enumerate(cats)}
        anns = [{"id": int(r) if r.isdigit() else r, "image_id": image_ids.get(self.image_of.get(r), 0),
                 "category_id": cat_ids[self.class_names[r]], "area": self.areas[r]} for r in self.qa]
        coco = {"images": [{"id": image_ids[n], "file_name": n} for n in images], "annotations": anns,
                "categories": [{"id": cat_ids[n], "name": n} for n in cats]}
        files = {"qa": out / "qa.json", "class_names": out / "class_names.json",
                 "annotations": out / "annotations.json", "descriptions": out / "descriptions.json"}
        write_json(files["qa"], {r: [q.as_dict() for q in qs] for r, qs in self.qa.items()})
        write_json(files["class_names"], self.class_names)
        write_json(files["annotations"], coco)
        write_json(files["descriptions"], self.descriptions)
        return files


def synthetic_bench(records: Iterable[ImageRecord], source: str = "<scene>") -> DlcBench:
    """DLC-Bench-style questions for every region of the synthetic world's records (`region_questions`).

    Region ids are the annotation ids; the class name (for the recognition question) is the shape, as
    DLC-Bench names the object's kind ("wild bird") and asks its attributes in questions; the area is the
    visible box's.
    """
    qa, names, areas, descriptions, image_of = {}, {}, {}, {}, {}
    for record in records:
        objects = scene_objects(record, source)
        for k, o in enumerate(objects):
            region = _region_id(record, k)
            if region in qa:
                raise EvaluationInputError(source, f"region id {region} occurs twice; annotation ids must be "
                                           "unique", f"{record.filename} instance {k}")
            qa[region] = region_questions(k, objects)
            names[region] = o.shape
            x1, y1, x2, y2 = o.box
            areas[region] = float((x2 - x1) * (y2 - y1))
            descriptions[region] = record.instances[k].description or ""
            image_of[region] = record.filename
    if not qa:
        raise EvaluationInputError(source, "no regions: the records have no instances")
    return DlcBench(qa=qa, class_names=names, areas=areas, descriptions=descriptions, image_of=image_of)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def description_subject(description: str) -> str:
    """The part of a description about the object itself: the first sentence, cut at the first relation
    word. ``"A small blue square with a striped pattern, in the top left. It is left of the green star."``
    -> ``"a small blue square with a striped pattern, in the top left"``."""
    first = re.split(r"[.!?\n]", description.strip().lower(), maxsplit=1)[0]
    cut = _SUBJECT_END.search(first)
    return first[: cut.start()] if cut else first


def _has_shape(words: Sequence[str], shape: str) -> bool:
    return shape in words or plural(shape) in words


def _stated(words: Sequence[str], attribute: str) -> list[str]:
    if attribute == "shape":
        return [s for s in SHAPES if _has_shape(words, s)]
    return [v for v in _ATTRIBUTES[attribute] if v in words]


def stated_relations(description: str, target: Mapping[str, str]) -> list[str]:
    """Relation words the description puts before a phrase naming `target` ("left of the large green star",
    "above a green star"); a phrase with a different size word names another object and is skipped."""
    sizes = "|".join(SIZE_NAMES)
    pattern = (rf"\b({'|'.join(RELATION_WORDS)})\s+(?:the|a|an)\s+((?:[a-z-]+\s+){{0,2}}?)"
               rf"{re.escape(target['colour'])}\s+{re.escape(target['shape'])}\b")
    out = []
    for m in re.finditer(pattern, description.lower()):
        size = re.search(rf"\b({sizes})\b", m.group(2))
        if size is None or size.group(1) == target["size"]:
            out.append(m.group(1))
    return out


class RuleJudge:
    """Answers the synthetic world's questions (those with a ``rule``) by exact words, no language model.

    The object's attributes are the vocabulary words in the description's subject (`description_subject`):

    * colour / shape / size / pattern: the right word stated -> the 1 choice; another word of that attribute
      but not the right one -> -1; none -> 0.5 ("not mentioned, but the object is"); an empty description
      -> 0 ("the object is not mentioned"). Shapes count in the plural too; only canonical words count
      (no synonyms: "crimson" is not "red").
    * relation: a relation word before a phrase naming the target (`stated_relations`): one that holds -> 1,
      only directional ones that do not hold -> -1, none or only "next to" -> 0.5.
    * wrong colour (negative): the claimed colour in the subject -> -1, else 1; empty description -> 0.
    * absent shape (negative): the shape (or its plural) anywhere in the description -> -1, else 1.
    * recognition: the region's shape in the subject -> Yes, else No.

    The reply is the chosen choice as ``"<letter>. <text>"``.
    """

    name = "rules"

    def outcome(self, description: str, question: Question) -> float | str:
        """The value of the choice the rules pick."""
        rule = question.rule
        if rule is None:
            raise DlcJudgeError("RuleJudge answers only the synthetic world's questions (entries with a 'rule'); "
                                "judge DLC-Bench's own questions with --judge-url or --judge-local")
        kind = rule["kind"]
        subject = _words(description_subject(description))
        empty = not _words(description)
        if kind == RECOGNITION:
            return RECOGNISED if _has_shape(subject, rule["value"]) else NOT_RECOGNISED
        if kind in _ATTRIBUTES:
            stated = _stated(subject, kind)
            if rule["value"] in stated:
                return 1
            if stated:
                return -1
            return 0 if empty else 0.5
        if kind == "relation":
            stated = stated_relations(description, rule["target"])
            if any(r in rule["holds"] for r in stated):
                return 1
            if any(r in RELATIONS for r in stated):
                return -1
            return 0 if empty else 0.5
        if kind == "wrong colour":
            if empty:
                return 0
            return -1 if rule["value"] in subject else 1
        if kind == "absent shape":
            return -1 if _has_shape(_words(description), rule["value"]) else 1
        raise DlcJudgeError(f"RuleJudge has no rule of kind {kind!r}; known: recognition, "
                            f"{', '.join(_ATTRIBUTES)}, relation, wrong colour, absent shape")

    def reply(self, description: str, question: Question) -> str:
        value = self.outcome(description, question)
        for k, (text, v) in enumerate(question.choices):
            if v == value:
                return f"{LETTERS[k]}. {text}"
        raise DlcJudgeError(f"question {question.text!r} ({question.subtype}) has no choice worth {value!r}")


# ----------------------------------------------------------------------------------------------- command line


def make_judge(*, url: str | None = None, model: str | None = None, api_key: str | None = None,
               local: str | Path | None = None, rules: bool = False, device: str = "cpu") -> Judge:
    """The one judge the options name (``url`` + ``model``, ``local``, or ``rules``); a ValueError says what to
    pass otherwise."""
    chosen = [name for name, on in (("--judge-url", url is not None), ("--judge-local", local is not None),
                                    ("--judge rules", rules)) if on]
    if len(chosen) != 1:
        what = "none" if not chosen else " and ".join(chosen)
        raise ValueError(f"give exactly one judge: --judge-url URL --judge-model NAME, --judge-local PATH, or "
                         f"--judge rules (got {what})")
    if url is not None:
        if not model:
            raise ValueError("--judge-url needs --judge-model NAME (the served model, e.g. "
                             "meta-llama/Meta-Llama-3.1-8B-Instruct)")
        return OpenAIJudge(url, model, api_key)
    if local is not None:
        return LocalJudge(local, device=device)
    return RuleJudge()


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


def load_cache(path: Path, judge_name: str) -> dict[str, dict]:
    """Replies saved by an earlier run with the same judge (``{}`` when there are none or the judge differs)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("judge") != judge_name or not isinstance(data.get("regions"), dict):
        return {}
    return data["regions"]


def save_cache(path: Path, judge_name: str, cache: Mapping[str, dict]) -> None:
    from groundscope.evaluate.report import write_json

    write_json(path, {"judge": judge_name, "regions": dict(cache)})
