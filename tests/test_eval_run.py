"""`run_evaluation` / `groundscope eval run` with fake detectors: outputs, metrics, resuming, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope.detections import Detections
from groundscope.evaluate import EvaluationInputError, run_evaluation
from groundscope.evaluate.coco import MMDET_MAX_DETS, coco_keys
from groundscope.evaluate.protocols import PLAIN
from groundscope.cli.evaluate import eval_app
from groundscope.evaluate.run import prompt_name

# ------------------------------------------------------------------------------------------------ data
# file -> [(xywh, category name)]
BOXES = {
    "a.png": [([10, 10, 50, 40], "traffic_light"), ([100, 80, 120, 90], "dog")],
    "b.png": [([5, 5, 20, 20], "dog")],
    "c.png": [([30, 30, 200, 150], "traffic_light")],
    "d.png": [],
}
CATEGORIES = {"traffic_light": 3, "dog": 7}


def xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in BOXES:
        Image.new("RGB", (320, 240), (90, 120, 150)).save(folder / name)
    return folder


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture()
def coco_file(tmp_path) -> Path:
    images = [{"id": i + 1, "file_name": f, "width": 320, "height": 240} for i, f in enumerate(BOXES)]
    anns = []
    for img in images:
        for box, name in BOXES[img["file_name"]]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": CATEGORIES[name],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": cid, "name": name, "frequency": "f"} for name, cid in CATEGORIES.items()]
    for img in images:  # LVIS fields too, so the same file serves the lvis kind
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    return write(tmp_path / "instances.json", {"images": images, "annotations": anns, "categories": cats})


class OracleDetector:
    """Duck-typed detector that answers from the ground truth (plus one low-scoring decoy box per call).

    Records every call in `calls`; raises KeyboardInterrupt on call number `interrupt_at` (1-based).
    """

    name = "oracle"

    def __init__(self, expressions=None, phrases=None, interrupt_at: int | None = None):
        self.expressions = expressions or {}
        self.phrases = phrases or {}
        self.calls: list[tuple[str, list[str]]] = []
        self.interrupt_at = interrupt_at

    def _log(self, method, images):
        self.calls.append((method, [Path(p).name for p in images]))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt

    def detect(self, images, classes, box_threshold=0.0, max_detections=300, **settings):
        self._log("detect", images)
        self.settings = settings
        assert classes == ["traffic light", "dog"]  # prompt names: "_" -> " ", in category id order
        out = []
        for p in images:
            gt = BOXES[Path(p).name]
            boxes = [xyxy(b) for b, _ in gt] + [[0, 200, 10, 210]]
            ids = [classes.index(n.replace("_", " ")) for _, n in gt] + [1]
            out.append(Detections(boxes, [0.9] * len(gt) + [0.05], ids, [classes[i] for i in ids]))
        return out

    def refer(self, images, expressions, top_k=1, **settings):
        self._log("refer", images)
        self.settings = settings
        assert top_k == 10
        return [
            Detections([[0, 0, 5, 5], self.expressions[e]], [0.3, 0.8], [0, 0], [e, e])  # decoy listed first
            for e in expressions
        ]

    def ground(self, images, captions, phrases=None, box_threshold=0.0, max_detections=300):
        self._log("ground", images)
        out = []
        for cap, spans in zip(captions, phrases, strict=True):
            boxes = [self.phrases[(cap, tuple(s))] for s in spans]
            out.append(Detections(boxes, [0.7] * len(boxes), list(range(len(boxes))), [cap[a:b] for a, b in spans]))
        return out


def run(detector, dataset, annotations, images, out, **kw):
    return run_evaluation(detector, dataset, annotations, images, out, progress=False, **kw)


# ------------------------------------------------------------------------------------------------ detection
def test_coco_run_writes_results_and_perfect_metrics(coco_file, images, tmp_path):
    det = OracleDetector()
    out = tmp_path / "out"
    metrics = run(det, "coco", coco_file, images, out, batch_size=3)
    assert [c[1] for c in det.calls] == [["a.png", "b.png", "c.png"], ["d.png"]]
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key  # the decoys score below every true box
    assert json.loads((out / "metrics.json").read_text()) == metrics
    # the official COCO protocol: mmdetection's maxDets [100, 300, 1000], every name prompted
    assert set(coco_keys(MMDET_MAX_DETS)) <= set(metrics) and "per_class" in metrics
    assert metrics["max_dets"] == [100, 300, 1000] and metrics["settings"]["max_dets"] == [100, 300, 1000]
    assert det.settings == {"official_names": True}
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4 + 4  # four true boxes and one decoy per image
    first = results[0]
    assert first == {
        "image_id": 1,
        "category_id": 3,
        "bbox": pytest.approx([10, 10, 50, 40]),
        "score": pytest.approx(0.9),
    }


def test_interrupted_run_resumes_without_redoing_images(coco_file, images, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(OracleDetector(interrupt_at=3), "coco", coco_file, images, out)
    journal = (out / "results.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 2  # header + the two images finished before the interruption
    assert not (out / "metrics.json").exists()

    det = OracleDetector()
    metrics = run(det, "coco", coco_file, images, out)
    assert [c[1] for c in det.calls] == [["c.png"], ["d.png"]]
    fresh = run(OracleDetector(), "coco", coco_file, images, tmp_path / "fresh")
    assert metrics == fresh
    assert (out / "results.json").read_text() == (tmp_path / "fresh" / "results.json").read_text()


def test_line_cut_short_by_a_crash_is_redone(coco_file, images, tmp_path):
    out = tmp_path / "out"
    complete = run(OracleDetector(), "coco", coco_file, images, out)
    journal = out / "results.jsonl"
    text = journal.read_text()
    journal.write_text(text[: len(text) - 25])  # the last image's line loses its end
    det = OracleDetector()
    assert run(det, "coco", coco_file, images, out) == complete
    assert [c[1] for c in det.calls] == [["d.png"]]
    assert journal.read_text() == text


def test_journal_of_another_run_is_refused(coco_file, images, tmp_path):
    out = tmp_path / "out"
    run(OracleDetector(), "coco", coco_file, images, out)
    with pytest.raises(EvaluationInputError, match=r"different run .*max_detections"):
        run(OracleDetector(), "coco", coco_file, images, out, max_detections=100)


def test_journal_records_precision_and_an_older_one_resumes_at_fp32_only(coco_file, images, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(OracleDetector(interrupt_at=3), "coco", coco_file, images, out)
    journal = out / "results.jsonl"
    lines = journal.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["run"].pop("precision") == "fp32"  # now written ...
    journal.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")  # ... and absent from older journals
    with pytest.raises(EvaluationInputError, match=r"precision: 'fp32' here, 'bf16' now"):
        run(OracleDetector(), "coco", coco_file, images, out, precision="bf16")
    det = OracleDetector()
    run(det, "coco", coco_file, images, out)  # fp32: the older journal's two images are reused
    assert [c[1] for c in det.calls] == [["c.png"], ["d.png"]]


def test_missing_image_fails_before_the_detector_runs(coco_file, images, tmp_path):
    (images / "c.png").unlink()
    det = OracleDetector()
    with pytest.raises(EvaluationInputError, match=r"c\.png not found"):
        run(det, "coco", coco_file, images, tmp_path / "out")
    assert det.calls == []


def test_lvis_run_with_plot(coco_file, images, tmp_path):
    out = tmp_path / "out"
    metrics = run(OracleDetector(), "lvis", coco_file, images, out, plot=True)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["fixed"]["AP"] == pytest.approx(1.0)
    assert metrics["APf"] == pytest.approx(1.0) and metrics["APr"] == -1.0
    with Image.open(out / "pr_curve.png") as png:
        assert png.format == "PNG" and png.size == (640, 480)
        # the curves are drawn: coloured pixels exist beyond the black/white/grey frame
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
        assert (np.ptp(pixels, axis=1) > 60).any()


def test_prompt_names_follow_mmdetection():
    assert prompt_name("traffic_light") == "traffic light"
    assert prompt_name("bow_(weapon)") == "bow"
    assert prompt_name("Ferris_wheel") == "Ferris wheel"


def test_lvis_v1_images_without_file_name_use_the_coco_url_path(coco_file, images, tmp_path):
    data = json.loads(coco_file.read_text())
    (images / "val2017").mkdir()
    for img in data["images"]:
        name = img.pop("file_name")
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{name}"
        (images / name).rename(images / "val2017" / name)
    det = OracleDetector()
    metrics = run(det, "lvis", write(tmp_path / "lvis_v1.json", data), images, tmp_path / "out")
    assert metrics["AP"] == pytest.approx(1.0)
    assert det.calls[0][1] == ["a.png"]


def test_odvg_run_with_label_map(images, tmp_path):
    lines = []
    for name, boxes in BOXES.items():
        inst = [{"bbox": xyxy(b), "label": 0 if n == "traffic_light" else 1} for b, n in boxes]
        lines.append(json.dumps({"filename": name, "height": 240, "width": 320, "detection": {"instances": inst}}))
    odvg = tmp_path / "val.odvg.jsonl"
    odvg.write_text("\n".join(lines) + "\n")
    label_map = write(tmp_path / "labels.json", {"0": "traffic_light", "1": "dog"})
    out = tmp_path / "out"
    metrics = run(OracleDetector(), "odvg", odvg, images, out, label_map=label_map)
    assert metrics["AP"] == pytest.approx(1.0)
    gt = json.loads((out / "ground_truth.json").read_text())
    assert [c["name"] for c in gt["categories"]] == ["traffic_light", "dog"]
    assert len(gt["images"]) == 4 and len(gt["annotations"]) == 4


# ------------------------------------------------------------------------------------------------ refexp, phrase
def test_refexp_run(images, tmp_path):
    exprs = {"the left light": [10, 10, 50, 40], "dog in the middle": [100, 80, 120, 90], "small dog": [5, 5, 20, 20]}
    files = ["a.png", "a.png", "b.png"]
    gt = {
        "images": [{"id": i, "file_name": f, "caption": e} for i, (f, e) in enumerate(zip(files, exprs, strict=True))],
        "annotations": [{"id": i + 1, "image_id": i, "bbox": b} for i, b in enumerate(exprs.values())],
    }
    ann = write(tmp_path / "refcoco_val.json", gt)
    out = tmp_path / "out"
    det = OracleDetector(expressions={e: xyxy(b) for e, b in exprs.items()})
    metrics = run(det, "refexp", ann, images, out, model_name="mm-gdino-tiny")
    assert metrics.pop("settings")["rec_rule"] == "mmgdino" and det.settings == {"rec_rule": "mmgdino"}
    assert metrics == {"P@1": 1.0, "P@5": 1.0, "P@10": 1.0, "num_expressions": 3}
    results = json.loads((out / "results.json").read_text())
    assert [r["score"] for r in results[:2]] == pytest.approx([0.8, 0.3])  # ranked by score


def test_phrase_run_passes_spans_and_scores(images, tmp_path):
    caption = "A dog next to a traffic light"
    gt = {
        "images": [{"id": 5, "file_name": "a.png", "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 5, "bbox": [100, 80, 120, 90], "phrase_ids": 0, "tokens_positive": [[0, 5]]},
            {"id": 2, "image_id": 5, "bbox": [10, 10, 50, 40], "phrase_ids": 1, "tokens_positive": [[14, 29]]},
        ],
    }
    ann = write(tmp_path / "flickr_val.json", gt)
    phrases = {(caption, (0, 5)): xyxy([100, 80, 120, 90]), (caption, (14, 29)): xyxy([10, 10, 50, 40])}
    out = tmp_path / "out"
    metrics = run(OracleDetector(phrases=phrases), "phrase", ann, images, out)
    metrics.pop("settings")
    assert metrics == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "R@-1": 1.0, "num_phrases": 2}
    results = json.loads((out / "results.json").read_text())
    assert [r["phrase_id"] for r in results] == [0, 1]


def test_phrase_spans_from_tokens_positive_eval(images, tmp_path):
    """MDETR / mmdetection files give the spans per image, ordered by phrase id, instead of per annotation."""
    caption = "A dog next to a traffic light"
    gt = {
        "images": [{"id": 5, "file_name": "a.png", "caption": caption, "tokens_positive_eval": [[[0, 5]], [[14, 29]]]}],
        "annotations": [
            {"id": 2, "image_id": 5, "bbox": [10, 10, 50, 40], "phrase_ids": 8},
            {"id": 1, "image_id": 5, "bbox": [100, 80, 120, 90], "phrase_ids": 3},
        ],
    }
    phrases = {(caption, (0, 5)): xyxy([100, 80, 120, 90]), (caption, (14, 29)): xyxy([10, 10, 50, 40])}
    metrics = run(OracleDetector(phrases=phrases), "phrase", write(tmp_path / "f.json", gt), images, tmp_path / "o")
    metrics.pop("settings")
    assert metrics == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "R@-1": 1.0, "num_phrases": 2}
    gt["images"][0]["tokens_positive_eval"] = [[[0, 5]]]  # one entry for two phrases
    with pytest.raises(EvaluationInputError, match=r"images\[0\].*tokens_positive_eval"):
        run(OracleDetector(phrases=phrases), "phrase", write(tmp_path / "g.json", gt), images, tmp_path / "o2")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_run_loads_the_model_by_name(coco_file, images, tmp_path, monkeypatch):
    import groundscope

    loaded = {}

    def fake_load_detector(name, device="cpu", dtype=None):
        loaded["args"] = (name, device)
        return OracleDetector()

    monkeypatch.setattr(groundscope, "load_detector", fake_load_detector, raising=False)
    out = tmp_path / "out"
    args = [
        "run",
        str(coco_file),
        "--model",
        "tiny-test",
        "--dataset",
        "coco",
        "--images",
        str(images),
        "--out",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    assert loaded["args"] == ("tiny-test", "cpu")
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(1.0)
    assert "AP50" in result.stdout
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["run"]["model"] == "tiny-test"


def test_model_factory_is_called_only_when_work_is_left(coco_file, images, tmp_path):
    made = []

    def factory():
        made.append(OracleDetector())
        return made[-1]

    out = tmp_path / "out"
    first = run(factory, "coco", coco_file, images, out, model_name="oracle")
    assert len(made) == 1 and len(made[0].calls) == 4
    assert run(factory, "coco", coco_file, images, out, model_name="oracle") == first  # finished: rescore only
    assert len(made) == 1


def test_cli_run_reports_a_model_that_does_not_load(coco_file, images, tmp_path, monkeypatch):
    import groundscope

    def broken(name, device="cpu", dtype=None):
        raise OSError(f"model {name!r} is not in the local cache")

    monkeypatch.setattr(groundscope, "load_detector", broken, raising=False)
    args = ["run", str(coco_file), "-m", "nope", "-d", "coco", "-i", str(images), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(eval_app, [*args, "--no-progress"])
    assert result.exit_code == 2
    assert "cannot load model 'nope'" in result.stderr and "Traceback" not in result.output


def test_cli_run_reports_bad_annotations_in_one_line(images, tmp_path, monkeypatch):
    import groundscope

    def never(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a bad annotation file")

    monkeypatch.setattr(groundscope, "load_detector", never, raising=False)
    bad = write(
        tmp_path / "bad.json",
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    args = [
        "run",
        str(bad),
        "--model",
        "m",
        "--dataset",
        "coco",
        "--images",
        str(images),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 2
    settings_line, *lines = result.stderr.strip().splitlines()  # the run first says which protocol it follows
    assert settings_line.startswith("coco, official protocol") and "maxDets [100, 300, 1000]" in settings_line
    assert len(lines) == 1 and "bad.json" in lines[0] and "annotations[0]" in lines[0] and "image_id 2" in lines[0]


# ------------------------------------------------------------------------------------------------ real detector
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_real_detector_scores_one_against_its_own_best_boxes(tiny_mm_dir, tmp_path):
    """End to end with the real detector API (a tiny random model from conftest): run once, make the model's own
    best boxes the ground truth, run again: every metric must then be exactly 1, which proves the calls, the
    class/phrase index mapping and the xyxy -> xywh -> xyxy round trip."""
    import groundscope

    det = groundscope.load_detector(str(tiny_mm_dir))
    size = {n: Image.open(EXAMPLES / n).size for n in ("chelsea.jpg", "coffee.jpg")}
    images = [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(size.items())]
    cats = [{"id": 17, "name": "cat"}, {"id": 47, "name": "coffee_cup"}]

    def coco(boxes):
        anns = [{"id": i + 1, "image_id": img, "category_id": c, "bbox": b} for i, (img, c, b) in enumerate(boxes)]
        return {"images": images, "annotations": anns, "categories": cats}

    # pass 1: dummy ground truth, to see the model's answers
    dummy = coco([(1, 17, [0, 0, 9, 9]), (1, 47, [0, 0, 9, 9])])
    first = run(det, "coco", write(tmp_path / "c1.json", dummy), EXAMPLES, tmp_path / "c1")
    results = json.loads((tmp_path / "c1" / "results.json").read_text())
    assert 0 < len(results) <= 2 * 300 and {r["category_id"] for r in results} <= {17, 47}
    assert first["AP"] == 0.0  # the dummy boxes are not found
    # pass 2: ground truth = the best box of each category on image 1, the only image left, so that box is also
    # the category's top-ranked detection over the dataset: precision 1 at full recall
    best = {}
    for r in results:
        if r["image_id"] == 1 and (r["category_id"] not in best or r["score"] > best[r["category_id"]]["score"]):
            best[r["category_id"]] = r
    truth = coco([(1, c, r["bbox"]) for c, r in best.items()])
    truth["images"] = truth["images"][:1]
    second = run(det, "coco", write(tmp_path / "c2.json", truth), EXAMPLES, tmp_path / "c2", settings=PLAIN)
    assert second["AP"] == pytest.approx(1.0) and second["AR1"] == pytest.approx(1.0)

    exprs = {0: ("chelsea.jpg", "the cat"), 1: ("coffee.jpg", "the cup on the saucer")}
    ref = lambda boxes: {  # noqa: E731
        "images": [{"id": i, "file_name": f, "caption": e} for i, (f, e) in exprs.items()],
        "annotations": [{"id": i + 1, "image_id": i, "bbox": boxes[i]} for i in exprs],
    }
    run(det, "refexp", write(tmp_path / "r1.json", ref({0: [0, 0, 9, 9], 1: [0, 0, 9, 9]})), EXAMPLES, tmp_path / "r1")
    ranked = json.loads((tmp_path / "r1" / "results.json").read_text())
    for i in exprs:
        scores = [r["score"] for r in ranked if r["image_id"] == i]
        assert 0 < len(scores) <= 10 and scores == sorted(scores, reverse=True)
    top1 = {i: next(r["bbox"] for r in ranked if r["image_id"] == i) for i in exprs}
    assert run(det, "refexp", write(tmp_path / "r2.json", ref(top1)), EXAMPLES, tmp_path / "r2")["P@1"] == 1.0

    caption = "A cat sits next to a red cup"
    phrase = lambda b0, b1: {  # noqa: E731
        "images": [{"id": 3, "file_name": "chelsea.jpg", "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 3, "bbox": b0, "phrase_ids": 0, "tokens_positive": [[0, 5]]},
            {"id": 2, "image_id": 3, "bbox": b1, "phrase_ids": 1, "tokens_positive": [[18, 28]]},
        ],
    }
    run(det, "phrase", write(tmp_path / "p1.json", phrase([0, 0, 9, 9], [0, 0, 9, 9])), EXAMPLES, tmp_path / "p1")
    grounded = json.loads((tmp_path / "p1" / "results.json").read_text())
    top = [next(r["bbox"] for r in grounded if r["phrase_id"] == p) for p in (0, 1)]
    assert run(det, "phrase", write(tmp_path / "p2.json", phrase(*top)), EXAMPLES, tmp_path / "p2")["R@1"] == 1.0


def test_odvg_ground_truth_errors_name_file_and_line(tmp_path):
    from groundscope.evaluate import EvaluationInputError
    from groundscope.evaluate.odvg import odvg_to_coco

    good = {"filename": "a.png", "height": 10, "width": 10,
            "detection": {"instances": [{"bbox": [1, 1, 5, 5], "label": 0, "category": "cat"}]}}
    bad = {"filename": "b.png", "height": 10, "width": 10,
           "detection": {"instances": [{"bbox": [5, 5, 1, 1], "label": 0, "category": "cat"}]}}
    f = tmp_path / "gt.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(EvaluationInputError, match=r"gt.jsonl:2: .*bbox"):
        odvg_to_coco(f)
    f.write_text(json.dumps(good) + "\n")
    coco = odvg_to_coco(f, label_map={"0": "cat"})
    assert coco["categories"] == [{"id": 0, "name": "cat"}]
    assert coco["annotations"][0]["bbox"] == [1, 1, 4, 4] and coco["images"][0]["id"] == 1
    g = tmp_path / "grounding.jsonl"
    g.write_text(json.dumps({"filename": "a.png", "height": 10, "width": 10, "grounding": {
        "caption": "a cat.", "regions": [{"bbox": [1, 1, 5, 5], "phrase": "a cat", "tokens_positive": [[0, 5]]}]}}) + "\n")
    with pytest.raises(EvaluationInputError, match="grounding file"):
        odvg_to_coco(g)


def test_coco_run_with_masks_reports_mask_ap_beside_box_ap(coco_file, images, tmp_path):
    """Ground-truth masks are the left half of each box. A detector whose masks are exactly those scores segm AP 1;
    one whose masks are the right halves (IoU 0 with the truth) scores segm AP 0, while box AP stays 1 for both."""
    from groundscope.masks import encode

    data = json.loads(coco_file.read_text())

    def half(box, right):
        m = np.zeros((240, 320), bool)
        x, y, w, h = (int(v) for v in box)
        if right:
            m[y : y + h, x + w // 2 : x + w] = True
        else:
            m[y : y + h, x : x + w // 2] = True
        return m

    for ann in data["annotations"]:
        ann["segmentation"] = encode(half(ann["bbox"], False))[0]
    gt = write(tmp_path / "with_masks.json", data)

    class MaskOracle(OracleDetector):
        def __init__(self, right):
            super().__init__()
            self.right = right

        def detect(self, images, classes, box_threshold=0.0, max_detections=300, masks=False, segmenter=None,
                   **settings):
            assert masks is True and segmenter == "my-sam"
            out = super().detect(images, classes, box_threshold, max_detections, **settings)
            return [d.with_masks(np.stack([half([x1, y1, x2 - x1, y2 - y1], self.right) for x1, y1, x2, y2 in d.xyxy]))
                    for d in out]

    good = run(MaskOracle(False), "coco", gt, images, tmp_path / "good", masks=True, segmenter="my-sam")
    assert good["AP"] == pytest.approx(1.0) and good["segm"]["AP"] == pytest.approx(1.0)
    bad = run(MaskOracle(True), "coco", gt, images, tmp_path / "bad", masks=True, segmenter="my-sam")
    assert bad["AP"] == pytest.approx(1.0) and bad["segm"]["AP"] == pytest.approx(0.0)
    results = json.loads((tmp_path / "good" / "results.json").read_text())
    assert all("segmentation" in r for r in results)
    with pytest.raises(EvaluationInputError, match="needs a 'segmentation' on every annotation"):
        run(MaskOracle(False), "coco", coco_file, images, tmp_path / "nomask", masks=True, segmenter="my-sam")
    with pytest.raises(EvaluationInputError, match="journal|another run|different"):
        run(MaskOracle(False), "coco", gt, images, tmp_path / "good")  # a box-only rerun of a masked run
