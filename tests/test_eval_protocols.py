"""The benchmarks' official protocols, each against the official implementation or a hand-computed case:
LVIS chunked prediction, mmdetection's COCO maxDets, the REC scoring rules and MDETR's GIoU, Flickr30k's phrase
spans and R@-1, the official ODinW lists."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_fixture
from groundscope.evaluate import run_evaluation
from groundscope.evaluate.coco import MMDET_MAX_DETS, coco_keys, evaluate_coco
from groundscope.evaluate.odinw import average_metrics, builtin_odinw, evaluate_odinw
from groundscope.evaluate.phrase import evaluate_phrase
from groundscope.evaluate.refexp import evaluate_refexp
from groundscope.images import preprocess
from groundscope.prompts import chunk_classes, rec_prompt
from groundscope.rec_subject import first_noun_phrase, subject_spans

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from conftest import tokenizer_dir

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ------------------------------------------------------------------------------------------------ COCO maxDets
def _ranked_151st():
    """One image, two cats: the first found at rank 1, the second only at rank 151 (149 misses between)."""
    gt = {"images": [{"id": 1, "width": 1000, "height": 1000}], "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "area": 1e4,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [500, 500, 100, 100], "area": 1e4,
                           "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.99}]
    res += [{"image_id": 1, "category_id": 1, "bbox": [300 + i, 5, 20, 20], "score": 0.9 - i * 1e-3} for i in range(149)]
    res.append({"image_id": 1, "category_id": 1, "bbox": [500, 500, 100, 100], "score": 0.5})
    return gt, res


def _pycocotools(gt, res, max_dets=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(res))), "bbox")
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_mmdet_max_dets_equal_pycocotools_run_both_ways():
    gt, res = _ranked_151st()
    for caps in (None, MMDET_MAX_DETS):
        expected = _pycocotools(gt, res, caps)
        ours = evaluate_coco(gt, res, **({"max_dets": caps} if caps else {}))
        keys = coco_keys(caps or (1, 10, 100))
        assert [ours[k] for k in keys] == pytest.approx(list(expected), abs=1e-12), caps
    # the case the setting exists for: AP at 100 detections, AP50 at 1000 (the second cat counts)
    mm = evaluate_coco(gt, res, max_dets=MMDET_MAX_DETS)
    assert mm["AP"] == pytest.approx(51 / 101) and mm["AP50"] == pytest.approx((51 + 50 * 2 / 151) / 101)
    assert mm["max_dets"] == [100, 300, 1000] and "AR1000" in mm


def test_pycocotools_summary_rule_on_the_official_demo_files():
    folder = shared_fixture("metrics", "cocoapi_val2014_100")
    gt, res = folder / "instances_val2014_100.json", folder / "instances_val2014_fakebbox100_results.json"
    expected = _pycocotools(json.loads(gt.read_text()), json.loads(res.read_text()), MMDET_MAX_DETS)
    ours = evaluate_coco(gt, res, max_dets=MMDET_MAX_DETS)
    assert [ours[k] for k in coco_keys(MMDET_MAX_DETS)] == pytest.approx(list(expected), abs=1e-12)


# ------------------------------------------------------------------------------------------------ LVIS
def _official_clean(name: str) -> str:
    """mmdetection's clean_label_name, verbatim in behaviour (greedy parentheses, no strip)."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


def _official_positive_map(enc, tokens_positive, length):
    """mmdetection's create_positive_map: char_to_token at both ends, with its fallbacks, normalised."""
    pm = torch.zeros((len(tokens_positive), length))
    for j, spans in enumerate(tokens_positive):
        for beg, end in spans:
            b, e = enc.char_to_token(beg), enc.char_to_token(end - 1)
            if b is None:
                b = enc.char_to_token(beg + 1) or enc.char_to_token(beg + 2)
            if e is None:
                e = enc.char_to_token(end - 2) or enc.char_to_token(end - 3)
            if b is None or e is None:
                continue
            pm[j, b : e + 1] = 1
    return pm / (pm.sum(-1, keepdim=True) + 1e-6)


def _official_lvis_predict(model, tok, pixel_values, size, names, chunk=40, max_per_img=300):
    """The official chunked prediction, rebuilt from transformers' own forward: chunks of 40 cleaned names,
    mean-over-tokens scores, the top 300 of each chunk, chunks concatenated (labels offset by the chunk start)."""
    h, w = size
    out = []
    for start in range(0, len(names), chunk):
        words = [_official_clean(n) for n in names[start : start + chunk]]
        caption, spans = "", []
        for word in words:
            spans.append([[len(caption), len(caption) + len(word)]])
            caption += word + ". "
        enc = tok([caption], return_tensors="pt")
        with torch.no_grad():
            o = model(pixel_values=pixel_values, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=enc.get("token_type_ids"))
        probs = o.logits[0].sigmoid()  # (Q, max_text_len), -inf (0) past the text
        pm = _official_positive_map(enc, spans, probs.shape[-1])
        scores = probs @ pm.T  # the mean over each name's tokens
        top = scores.reshape(-1).topk(min(max_per_img, scores.numel()))
        query, label = top.indices // scores.shape[1], top.indices % scores.shape[1]
        b = o.pred_boxes[0][query]
        xyxy = torch.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                            b[:, 1] + b[:, 3] / 2], -1) * torch.tensor([w, h, w, h])
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        for s, lab, box in zip(top.values.tolist(), (label + start).tolist(), xyxy.tolist()):
            out.append((lab, s, [box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    return out


def test_lvis_run_reproduces_the_official_chunked_protocol_and_lvis_api(tiny_mm_dir, tmp_path, monkeypatch):
    lvis = pytest.importorskip("lvis", reason="the official lvis-api is the reference")
    monkeypatch.setattr(np, "float", float, raising=False)  # numpy 2 removed np.float; lvis-api still uses it
    import groundscope

    cats = json.loads(shared_fixture("metrics", "lvis_val_100", "lvis_val_100.json").read_text())["categories"]
    names = [c["name"] for c in cats]  # every LVIS name (v0.5: 1230), duplicates after cleaning included
    det = groundscope.load_detector(str(tiny_mm_dir))
    det.image_size = (96, 160)  # small inputs keep 2 x 31 forward passes fast; the protocol is the same
    files = ["chelsea.jpg", "coffee.jpg"]
    reference = {}
    for i, f in enumerate(files):
        prep = preprocess(Image.open(EXAMPLES / f).convert("RGB"), *det.image_size)
        reference[i + 1] = _official_lvis_predict(det.model, det.tokenizer, prep.pixel_values[None], prep.orig_size,
                                                  names)
    # ground truth: each image's best box of a few categories, among them the names that clean to a duplicate
    # ("bow_(decorative_ribbons)" repeats "bow") which a first-occurrence merge could never detect
    wanted = {names.index(n) for n in ("bow_(decorative_ribbons)", "fish_(food)", "salmon_(food)", "acorn")}
    images, anns = [], []
    for img_id, preds in reference.items():
        wdt, hgt = Image.open(EXAMPLES / files[img_id - 1]).size
        images.append({"id": img_id, "file_name": files[img_id - 1], "width": wdt, "height": hgt,
                       "neg_category_ids": [cats[3]["id"]], "not_exhaustive_category_ids": []})
        best = {}
        for lab, s, box in preds:
            if lab in wanted and (lab not in best or s > best[lab][0]):
                best[lab] = (s, box)
        for lab, (_, box) in sorted(best.items()):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cats[lab]["id"], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": cats[names.index("acorn")]["id"],
                 "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0})  # a box nothing finds: AP below 1
    gt = write(tmp_path / "lvis_tiny.json", {"images": images, "annotations": anns, "categories": cats})

    metrics = run_evaluation(det, "lvis", gt, EXAMPLES, tmp_path / "run", progress=False)
    assert metrics["settings"]["chunk_size"] == 40 and metrics["settings"]["per_chunk"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = [(img, cats[lab]["id"], s, box) for img in (1, 2) for lab, s, box in reference[img]]
    assert len(results) == len(expected) == 2 * 31 * 300  # 31 chunks of 40 names, 300 boxes each, all kept
    # Chunk by chunk, the same (category, box, score) triples. Random weights leave near-equal scores (1e-8
    # apart, below the two forwards' float differences), so within a chunk the order of near-ties and the last
    # places of the top 300 may differ: every triple of the first 290 must be among the other side's 300.
    for side_a, side_b in ((results, expected), (expected, results)):
        for g in range(0, len(results), 300):
            pool: dict[int, list] = {}
            for e in side_b[g : g + 300]:
                cat, score, box = (e["category_id"], e["score"], e["bbox"]) if isinstance(e, dict) else e[1:]
                pool.setdefault(cat, []).append((score, box))
            for e in sorted(side_a[g : g + 300], key=lambda e: -(e["score"] if isinstance(e, dict) else e[2]))[:290]:
                cat, score, box = (e["category_id"], e["score"], e["bbox"]) if isinstance(e, dict) else e[1:]
                assert any(abs(score - s2) < 1e-5 and np.allclose(box, b2, atol=2e-3) for s2, b2 in pool.get(cat, [])), (
                    g, cat, score)
    assert [r["image_id"] for r in results] == [e[0] for e in expected]
    dup = {cats[names.index(n)]["id"] for n in ("bow_(decorative_ribbons)", "fish_(food)", "salmon_(food)")}
    assert dup <= {r["category_id"] for r in results}

    # fixed AP (Dave et al.): the 10,000 best of each category, no per-image cap, scored by lvis-api
    by_cat: dict[int, list] = {}
    for r in results:
        by_cat.setdefault(r["category_id"], []).append(r)
    capped = [r for rs in by_cat.values() for r in sorted(rs, key=lambda r: -r["score"])[:10_000]]
    gt_api = lvis.LVIS(str(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = lvis.LVISEval(gt_api, lvis.LVISResults(gt_api, capped, max_dets=-1), "bbox")
        ev.run()
    assert 0 < metrics["fixed"]["AP"] < 1
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert metrics["fixed"][key] == pytest.approx(ev.results[key], abs=1e-9), key


def test_chunk_size_and_duplicates_in_prompts(tokenizer):
    names = ["bow_(weapon)", "bow_(decorative_ribbons)", "cat", "dog", "fish"]
    from groundscope.evaluate.run import prompt_name

    cleaned = [prompt_name(n) for n in names]
    with pytest.warns(UserWarning, match="repeats"):
        merged = chunk_classes(tokenizer, cleaned, 256)
    assert [p.entity_ids for p in merged] == [[0, 2, 3, 4]]
    kept = chunk_classes(tokenizer, cleaned, 256, chunk_size=2, official_names=True)
    assert [p.entity_ids for p in kept] == [[0, 1], [2, 3], [4]]
    assert [p.text for p in kept] == ["bow. bow.", "cat. dog.", "fish."]
    with pytest.raises(Exception, match="chunk_size"):
        chunk_classes(tokenizer, ["a " * 200, "b " * 200], 64, chunk_size=2)
    # ODinW35's ChessPieces lists a blank class "  ": the official text keeps its ". ", with no tokens for it
    with pytest.raises(Exception, match="empty"):
        chunk_classes(tokenizer, ["  ", "black bishop"], 256)
    [p] = chunk_classes(tokenizer, ["  ", "black bishop"], 256, official_names=True)
    official = tokenizer("  . black bishop. ")["input_ids"]
    assert p.input_ids[0].tolist() == official and p.token_spans[0] == [] and p.entity_ids == [0, 1]
    assert p.positive_map()[0].sum() == 0  # never scored above 0


# ------------------------------------------------------------------------------------------------ REC rules
def test_llmdet_subject_is_the_first_noun_phrase():
    tagged = [("the", "DT"), ("tall", "JJ"), ("man", "NN"), ("on", "IN"), ("the", "DT"), ("left", "NN"), (".", ".")]
    assert first_noun_phrase(tagged) == "the tall man"
    # a stopword chunk is skipped; proper nouns (NNP) and comparatives (JJR) are outside the grammar
    tagged = [("her", "PRP$"), ("s", "NN"), ("bigger", "JJR"), ("Bob", "NNP"), ("dogs", "NNS")]
    assert first_noun_phrase(tagged, {"s"}) == "dogs"
    assert first_noun_phrase([("left", "VBD")]) is None
    text = "dog next to a dog. "
    assert subject_spans(text, "dog") == [(0, 3), (14, 17)]  # every occurrence is an entity
    assert subject_spans("left. ", None) == [(0, 6)]  # no noun phrase: the whole text


def test_llmdet_chunker_matches_nltk_regexp_parser():
    nltk = pytest.importorskip("nltk")
    tagged = [("a", "DT"), ("big", "JJ"), ("red", "JJ"), ("cars", "NNS"), ("near", "IN"), ("the", "DT"),
              ("tree", "NN"), ("trunk", "NN")]
    tree = nltk.RegexpParser("NP: {<DT>?<JJ>*<NN|NNS>}").parse(tagged)
    official = [" ".join(w for w, _ in t.leaves()) for t in tree if isinstance(t, nltk.tree.Tree)]
    assert first_noun_phrase(tagged) == official[0] == "a big red cars"


def test_rec_rules_against_transformers_forward(tiny_mm_dir):
    import groundscope

    det = groundscope.load_detector(str(tiny_mm_dir))
    det.image_size = (96, 160)
    expr = "the cat on the sofa"
    prep = preprocess(Image.open(EXAMPLES / "chelsea.jpg").convert("RGB"), *det.image_size)
    enc = det.tokenizer([expr + ". "], return_tensors="pt")
    with torch.no_grad():
        o = det.model(pixel_values=prep.pixel_values[None], input_ids=enc["input_ids"],
                      attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    probs = o.logits[0].sigmoid()[:, : enc["input_ids"].shape[1]]
    h, w = prep.orig_size

    def boxes(q):
        b = o.pred_boxes[0][q]
        xyxy = torch.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                            b[:, 1] + b[:, 3] / 2], -1) * torch.tensor([w, h, w, h])
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        return xyxy.numpy()

    # MM-GDINO: the best probability over every token, [CLS], [SEP] and "." included
    best = probs.max(-1).values
    top = best.topk(5)
    got = det.refer(EXAMPLES / "chelsea.jpg", expr, top_k=5, rec_rule="mmgdino")
    np.testing.assert_allclose(got.scores, top.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(got.xyxy, boxes(top.indices), atol=1e-3)
    # LLMDet: the mean over the first noun phrase ("the cat"; tags given, as NLTK would give them)
    tags = {"the": "DT", "cat": "NN", "on": "IN", "sofa": "NN", ".": "."}
    tagger = (lambda text: [(t, tags[t]) for t in text.replace(".", " .").split()], frozenset())
    prompt = rec_prompt(det.tokenizer, expr, "llmdet", 256, tagger)
    assert prompt.labels == ["the cat"] and prompt.text == "the cat on the sofa. "
    cat_tokens = [1, 2]  # [CLS] the cat on ...
    mean = probs[:, cat_tokens].mean(-1)
    got = det.refer(EXAMPLES / "chelsea.jpg", expr, top_k=5, rec_rule="llmdet", tagger=tagger)
    np.testing.assert_allclose(got.scores, mean.topk(5).values.numpy(), atol=1e-5)
    # groundscope's own rule is the mean over the whole expression, which the two differ from
    mean_all = probs[:, 1:6].mean(-1)
    np.testing.assert_allclose(det.refer(EXAMPLES / "chelsea.jpg", expr, top_k=5).scores,
                               mean_all.topk(5).values.numpy(), atol=1e-5)


def _mdetr_giou(a, b):
    """MDETR util/box_ops.generalized_box_iou for one pair of xyxy boxes."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_refexp_giou_is_mdetr_rule():
    pred, target = [0, 0, 10, 10], [1.8, 1.8, 11.8, 11.8]
    assert _mdetr_giou(pred, target) < 0.5 < 67.24 / 132.76  # IoU 0.506 hits, GIoU 0.460 misses
    gt = {"images": [{"id": 0, "file_name": "a.jpg", "caption": "the box"}],
          "annotations": [{"id": 1, "image_id": 0, "bbox": [1.8, 1.8, 10, 10]}]}
    res = [{"image_id": 0, "bbox": [0, 0, 10, 10], "score": 0.9}]
    assert evaluate_refexp(gt, res)["P@1"] == 1.0
    giou = evaluate_refexp(gt, res, overlap="giou")
    assert giou["P@1"] == 0.0 and giou["overlap"] == "giou"


# ------------------------------------------------------------------------------------------------ Flickr30k
def test_flickr_phrases_prompted_with_tokens_positive_eval_and_upper_bound_recall(tmp_path):
    caption = "A dog and a cat next to the dog"
    # the box is shared by both mentions of the dog: its tokens_positive holds both spans, the phrase only one
    gt = {"images": [{"id": 5, "file_name": "a.png", "caption": caption, "tokens_positive_eval": [[[0, 5]]]}],
          "annotations": [{"id": 1, "image_id": 5, "bbox": [100, 80, 120, 90], "phrase_ids": 0,
                           "tokens_positive": [[0, 5], [24, 31]]}]}
    Image.new("RGB", (320, 240)).save(tmp_path / "a.png")

    class Recorder:
        def ground(self, images, captions, phrases=None, **kw):
            self.phrases = phrases
            from groundscope.detections import Detections

            # 11 boxes of the phrase, the right one last: R@10 misses it, R@-1 (all boxes) finds it
            boxes = [[0, 0, 5, 5]] * 10 + [[100, 80, 220, 170]]
            return [Detections(boxes, [0.9 - 0.01 * i for i in range(11)], [0] * 11, ["A dog"] * 11)]

    rec = Recorder()
    metrics = run_evaluation(rec, "phrase", write(tmp_path / "f.json", gt), tmp_path, tmp_path / "o", progress=False)
    assert rec.phrases == [[(0, 5)]]
    assert metrics["R@10"] == 0.0 and metrics["R@-1"] == 1.0
    assert len(json.loads((tmp_path / "o" / "results.json").read_text())) == 11  # every box of the phrase


# ------------------------------------------------------------------------------------------------ ODinW
# The official caption prompts, as listed in iSEE-Laboratory/LLMDet configs/val/grounding_dino_swin-t_odinw13.py
# and _odinw35.py (and mmdetection's configs/mm_grounding_dino/odinw/).
ODINW13_PROMPTS = {
    "CottontailRabbits": {"Cottontail-Rabbit": {"name": "rabbit"}},
    "EgoHands": {"hand": {"suffix": " of a person"}},
    "NorthAmericaMushrooms": {"CoW": {"name": "flat mushroom"}, "chanterelle": {"name": "yellow mushroom"}},
    "Packages": {"package": {"prefix": "there is a ", "suffix": " on the porch"}},
}
ODINW35_PROMPTS = {
    "EgoHands_generic": {"hand": {"suffix": " of a person"}},
    "Packages": {"package": {"prefix": "there is a ", "suffix": " on the porch"}},
    "pothole": {"pothole": {"prefix": "there are some ", "name": "holes", "suffix": " on the road"}},
}


def test_builtin_odinw_lists_are_the_official_configs():
    o13, o35 = builtin_odinw("odinw13"), builtin_odinw("odinw35")
    assert [d.name for d in o13] == [
        "AerialMaritimeDrone", "Aquarium", "CottontailRabbits", "EgoHands", "NorthAmericaMushrooms", "Packages",
        "PascalVOC", "pistols", "pothole", "Raccoon", "ShellfishOpenImages", "thermalDogsAndPeople",
        "VehiclesOpenImages"]
    assert len(o35) == 35 and sum(len(d.classes) for d in o35) == 314
    assert {d.name: d.caption_prompt for d in o13 if d.caption_prompt} == ODINW13_PROMPTS
    assert {d.name: d.caption_prompt for d in o35 if d.caption_prompt} == ODINW35_PROMPTS
    files = {d.name: f"{d.folder}/{d.annotations}" for d in o35}
    assert files["ChessPieces"] == "ChessPieces/Chess Pieces.v23-raw.coco/valid/new_annotations_without_background.json"
    assert files["pistols"] == "pistols/export/val_annotations_without_background.json"
    assert {d.name: f"{d.folder}/{d.annotations}" for d in o13}["pothole"] == (
        "pothole/valid/annotations_without_background.json")


def test_caption_prompt_text_and_tokens(tokenizer):
    [p] = chunk_classes(tokenizer, ["package", "box"], 256,
                        caption_prompt={"package": {"prefix": "there is a ", "suffix": " on the porch"}})
    assert p.text == "there is a package on the porch. box."
    assert [p.text[a:b] for a, b in p.entity_spans[0]] == ["package"]
    words = [p.text[a:b] for a, b in (p.offsets[t] for t in p.token_spans[0])]
    assert words == ["package"] and p.labels == ["package", "box"]


def test_odinw_mean_of_3_decimal_values():
    per = {"a": {"AP": 0.12345}, "b": {"AP": 0.2}, "c": {"AP": -1}}
    assert average_metrics(per, ["AP"])["AP"] == pytest.approx((0.12345 + 0.2) / 2)
    assert average_metrics(per, ["AP"], round_to=3)["AP"] == pytest.approx((0.123 + 0.2) / 2)


def _fake_odinw_root(root: Path, manifest: str) -> None:
    for i, d in enumerate(builtin_odinw(manifest)):
        folder = root / d.folder
        (folder / d.images).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (40 + i, 90, 120)).save(folder / d.images / "img.jpg")
        # categories in file order, one annotation on the first class
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(d.classes)]
        ann = {"images": [{"id": 1, "file_name": "img.jpg", "width": 64, "height": 48}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 30, 20], "area": 600,
                                "iscrowd": 0}], "categories": cats}
        (folder / d.annotations).parent.mkdir(parents=True, exist_ok=True)
        write(folder / d.annotations, ann)


def test_eval_run_odinw13_runs_every_dataset_with_its_prompt(tmp_path):
    from groundscope.detections import Detections
    from groundscope.evaluate.odinw_run import run_odinw

    root = tmp_path / "odinw"
    _fake_odinw_root(root, "odinw13")

    class Finder:
        """Finds the first class's box (score 0.9) and a miss; records what each dataset was prompted with."""
        name = "finder"

        def __init__(self):
            self.calls = []

        def detect(self, images, classes, box_threshold=0.0, max_detections=300, **settings):
            self.calls.append((list(classes), settings.get("caption_prompt", {})))
            return [Detections([[4, 4, 34, 24], [40, 30, 60, 46]], [0.9, 0.8], [0, 0], [classes[0]] * 2)
                    for _ in images]

    finder = Finder()
    result = run_odinw(finder, "odinw13", root, tmp_path / "out", progress=False)
    assert result["num_datasets"] == 13 and result["rounded_to"] == 3 and result["max_dets"] == [100, 300, 1000]
    prompts = dict(zip([d.name for d in builtin_odinw("odinw13")], finder.calls))
    assert prompts["CottontailRabbits"] == (["Cottontail-Rabbit"], {"Cottontail-Rabbit": {"name": "rabbit"}})
    assert prompts["Packages"][1] == {"package": {"prefix": "there is a ", "suffix": " on the porch"}}
    assert prompts["pothole"][1] == {}  # odinw13's pothole has no caption prompt (odinw35's has one)
    for name, m in result["datasets"].items():
        assert m["AP"] == pytest.approx(1.0), name  # one object, found first
    assert (tmp_path / "out" / "odinw.json").is_file()
    with pytest.raises(Exception, match="not found"):
        run_odinw(finder, "odinw35", root, tmp_path / "out35", progress=False)


def test_odinw_results_files_scored_with_rounding_and_mmdet_caps(tmp_path):
    gt, res = _ranked_151st()
    triples = [("one", gt, res), ("two", gt, res[:1])]
    out = evaluate_odinw(triples, max_dets=MMDET_MAX_DETS, round_to=3)
    assert out["datasets"]["one"]["AP50"] == pytest.approx((51 + 50 * 2 / 151) / 101)
    assert out["average"]["AP"] == pytest.approx((round(51 / 101, 3) + round(51 / 101, 3)) / 2)
