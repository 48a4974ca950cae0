"""Sliced inference (groundscope.slicing): tile placement, SAHI's merge rules by hand, union equality, borders,
masks, the whole-image shortcut, errors, and the hook in every entry point (detector, CLI, label, eval run,
serve). A stub detector that finds solid-colour blobs by their pixels gives exact boxes and masks on any tile;
the bundled nano runs the real path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import groundscope as gs
from groundscope.detections import Detections
from groundscope.slicing import (
    SliceError,
    SliceSpec,
    match_matrix,
    merge_detections,
    parse_slices,
    plan,
    shift_detections,
    sliced_detect,
    sliced_refer,
    tile_boxes,
)

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "examples" / "synth_shapes.png"
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module's nano runs (many small tiles: a second thread only waits, and on a
    shared machine it costs far more than it gives); the suite's setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class BlobDetector:
    """Finds, per class name (a colour), the one box around that colour's pixels in each input, with its exact
    mask; the score is the colour's (red 0.9, blue 0.8, green 0.7) plus pixels / 1e6, so a whole object outscores
    a cut part of it. Records the input sizes of every call."""

    def __init__(self):
        self.calls: list[list[tuple[int, int]]] = []

    def _find(self, im: Image.Image, classes, masks: bool) -> Detections:
        arr = np.asarray(im.convert("RGB"))
        boxes, scores, ids, labels, ms = [], [], [], [], []
        for k, name in enumerate(classes):
            hit = np.all(arr == COLOURS[name], axis=-1)
            if not hit.any():
                continue
            ys, xs = np.nonzero(hit)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            scores.append({"red": 0.9, "blue": 0.8, "green": 0.7}[name] + hit.sum() / 1e6)
            ids.append(k)
            labels.append(name)
            ms.append(hit)
        return Detections(xyxy=np.asarray(boxes, np.float32).reshape(-1, 4), scores=scores, class_ids=ids,
                          labels=labels, masks=(np.stack(ms) if ms else np.zeros((0, *arr.shape[:2]), bool))
                          if masks else None)

    def detect(self, images, classes, *, max_detections=300, nms_iou=None, masks=False, **_):
        ims = images if isinstance(images, list) else [images]
        self.calls.append([im.size for im in ims])
        out = [self._find(im, classes, masks)[:max_detections] for im in ims]
        return out if isinstance(images, list) else out[0]


@pytest.fixture(scope="module")
def nano():
    return gs.load_detector("nano")


def canvas(width: int, height: int, objects: dict[str, tuple[int, int, int, int]]) -> Image.Image:
    arr = np.full((height, width, 3), 128, np.uint8)
    for name, (x1, y1, x2, y2) in objects.items():
        arr[y1:y2, x1:x2] = COLOURS[name]
    return Image.fromarray(arr)


def as_set(d: Detections) -> set:
    return {(tuple(float(v) for v in b), lab) for b, lab in zip(d.xyxy, d.labels)}


# ---------------------------------------------------------------------------- tiles
def sahi_slice_bboxes(h: int, w: int, sh: int, sw: int, ratio: float) -> list[list[int]]:
    """obss/sahi sahi/slicing.py get_slice_bboxes, transcribed (the reference our placement must equal)."""
    out, y_max, y_min = [], 0, 0
    y_ov, x_ov = int(ratio * sh), int(ratio * sw)
    while y_max < h:
        x_min = x_max = 0
        y_max = y_min + sh
        while x_max < w:
            x_max = x_min + sw
            if y_max > h or x_max > w:
                xmax, ymax = min(w, x_max), min(h, y_max)
                out.append([max(0, xmax - sw), max(0, ymax - sh), xmax, ymax])
            else:
                out.append([x_min, y_min, x_max, y_max])
            x_min = x_max - x_ov
        y_min = y_max - y_ov
    return out


def test_tiles_by_hand_and_as_sahi_places_them():
    # 250 wide, 100 tiles, overlap 0.2: step 80 -> starts 0, 80, then the last tile moved back to end at 250
    assert tile_boxes(100, 250, 100, 100, 0.2).tolist() == [[0, 0, 100, 100], [80, 0, 180, 100], [150, 0, 250, 100]]
    assert tile_boxes(60, 50, 640, 640).tolist() == [[0, 0, 50, 60]]  # larger than the image: the image
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w, sh, sw = (int(v) for v in rng.integers(20, 300, 4))
        ratio = float(rng.choice([0.0, 0.1, 0.2, 0.5]))
        if sh > h or sw > w:
            continue  # SAHI then gives a tile of the image's size too, once per axis (ours: same, tested above)
        assert sorted(map(tuple, tile_boxes(h, w, sh, sw, ratio).tolist())) == sorted(
            map(tuple, sahi_slice_bboxes(h, w, sh, sw, ratio))), (h, w, sh, sw, ratio)


# ---------------------------------------------------------------------------- merge rules by hand
def dets(rows):
    """rows: (x1, y1, x2, y2, score, class_id)."""
    a = np.asarray(rows, np.float64)
    return Detections(xyxy=a[:, :4], scores=a[:, 4], class_ids=a[:, 5].astype(int),
                      labels=[f"c{int(c)}" for c in a[:, 5]])


def test_match_metrics_by_hand():
    a, b = [[0, 0, 10, 10]], [[0, 0, 10, 5], [5, 0, 15, 10], [20, 20, 30, 30]]
    assert match_matrix(a, b, "ios").tolist() == [[1.0, 0.5, 0.0]]
    np.testing.assert_allclose(match_matrix(a, b, "iou"), [[0.5, 50 / 150, 0.0]])


def test_nms_and_greedy_nmm_by_hand():
    d = dets([
        (0, 0, 10, 10, 0.9, 0),   # A: kept
        (0, 0, 10, 5, 0.8, 0),    # inside A: IOS 1 -> taken (NMS drops it, NMM unites it: A stays A)
        (5, 0, 15, 10, 0.7, 0),   # IOS with A exactly 0.5: taken (>= 0.5) but not merged (has_match needs > 0.5)
        (2, 2, 14, 12, 0.6, 0),   # IOS 64/100 = 0.64 with A: merged -> union (0, 0, 14, 12)
        (0, 0, 10, 10, 0.5, 1),   # another class: untouched
        (40, 40, 50, 50, 0.4, 0),  # far away: a box of its own
    ])
    nms = merge_detections(d, "nms", "ios", 0.5)
    assert nms.xyxy.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50]]
    np.testing.assert_allclose(nms.scores, [0.9, 0.5, 0.4])
    assert nms.class_ids.tolist() == [0, 1, 0]
    nmm = merge_detections(d, "nmm", "ios", 0.5)
    assert nmm.xyxy.tolist() == [[0, 0, 14, 12], [0, 0, 10, 10], [40, 40, 50, 50]]
    np.testing.assert_allclose(nmm.scores, [0.9, 0.5, 0.4])
    # IOU instead: only boxes with IoU >= 0.5 with A are taken (the half box, IoU 0.5) -> A unchanged
    assert merge_detections(d, "nmm", "iou", 0.5).xyxy.tolist()[0] == [0, 0, 10, 10]


def test_shift_moves_boxes_and_pastes_masks():
    m = np.zeros((1, 4, 5), bool)
    m[0, 1:3, 2:4] = True
    d = Detections(xyxy=[[2, 1, 4, 3]], scores=[0.5], class_ids=[0], labels=["x"], masks=m)
    s = shift_detections(d, (10, 20), (30, 40))
    assert s.xyxy.tolist() == [[12, 21, 14, 23]]
    full = s.mask_array()
    assert full.shape == (1, 30, 40) and full.sum() == 4 and full[0, 21:23, 12:14].all()


# ---------------------------------------------------------------------------- the sliced task, stub detector
def test_tiling_that_cuts_no_object_gives_the_union_of_the_tiles():
    image = canvas(200, 100, {"red": (10, 10, 40, 40), "blue": (120, 50, 170, 90)})
    classes = ["red", "blue", "green"]
    for overlap in (0.0, 0.2):  # 0.2: blue lies whole in two tiles, the duplicate merges away
        spec = SliceSpec(100, 100, overlap, full_image=False)
        det = BlobDetector()
        merged = sliced_detect(det, image, classes, spec)
        inputs, offsets = plan(image, spec)
        tiles = [shift_detections(det._find(im, classes, False), o, (100, 200)) for im, o in zip(inputs, offsets)]
        assert len(tiles) == (2 if overlap == 0 else 3)
        assert as_set(merged) == set().union(*(as_set(t) for t in tiles))
        assert as_set(merged) == as_set(det._find(image, classes, False))  # = the whole image's boxes
        assert len(merged) == 2
        # one detector call for all tiles: the shared batched path (and one text encoding)
        assert det.calls == [[(100, 100)] * len(tiles)]


@pytest.mark.parametrize("rule", ["nmm", "nms"])
def test_an_object_cut_by_tile_borders(rule):
    """Green spans the border of tiles [0, 100) and [80, 180): the first sees a cut part, the second all of it;
    the third tile [100, 200) a cut part again. NMM (IOS) unites the parts with the whole; NMS keeps the
    best-scoring box, the whole one (it has more pixels). Masks follow the boxes."""
    image = canvas(200, 100, {"green": (90, 20, 130, 60)})
    d = sliced_detect(BlobDetector(), image, ["green"], SliceSpec(100, 100, 0.2, False, rule), masks=True)
    assert d.xyxy.tolist() == [[90, 20, 130, 60]]
    truth = np.zeros((100, 200), bool)
    truth[20:60, 90:130] = True
    assert np.array_equal(d.mask_array()[0], truth)
    # no overlap: the two halves only touch (IOS 0), so both stay: SAHI's rule has nothing to merge them by
    halves = sliced_detect(BlobDetector(), image, ["green"], SliceSpec(100, 100, 0.0, False, rule))
    assert sorted(halves.xyxy.tolist()) == [[90, 20, 100, 60], [100, 20, 130, 60]]


def test_nmm_unites_masks_of_parts():
    """Without the whole tile (tiles [0, 60) and [50, 110) of a 110-wide image), the object [40, 70) is cut in
    both; its parts overlap on [50, 60): IOS 1 -> one box, its mask the union = the whole object."""
    image = canvas(110, 30, {"red": (40, 5, 70, 25)})
    d = sliced_detect(BlobDetector(), image, ["red"], SliceSpec(30, 60, 0.2, False, "nmm"), masks=True)
    assert d.xyxy.tolist() == [[40, 5, 70, 25]] and int(d.mask_array().sum()) == 30 * 20


def test_full_image_pass_and_refer_best_over_all():
    image = canvas(200, 100, {"red": (10, 10, 40, 40)})
    det = BlobDetector()
    sliced_detect(det, image, ["red"], SliceSpec(100, 100, 0.0, full_image=True))
    assert det.calls == [[(100, 100), (100, 100), (200, 100)]]  # tiles, then the whole image, in one call

    class Refer(BlobDetector):
        def refer(self, images, expression, top_k=1, **_):
            return [d.top(top_k) for d in self.detect(images, ["red", "blue"])]

    both = canvas(200, 100, {"blue": (10, 10, 40, 40), "red": (150, 50, 160, 60)})
    r = sliced_refer(Refer(), both, "anything", SliceSpec(100, 100, 0.0), top_k=1)
    assert r.labels == ["red"] and r.xyxy.tolist() == [[150, 50, 160, 60]]  # red scores 0.9: best of all inputs


def test_a_tile_larger_than_the_image_runs_the_image_once(nano):
    classes = ["pink cross", "cyan star", "blue diamond", "yellow diamond"]
    seen = []
    own = nano.prepare
    nano.prepare = lambda images: seen.append(len(images)) or own(images)
    try:
        sliced = nano.detect(SYNTH, classes, box_threshold=0.3, slices=(1000, 1000))
    finally:
        del nano.prepare
    plain = nano.detect(SYNTH, classes, box_threshold=0.3)
    assert seen == [1]
    assert as_set(sliced) == as_set(plain) and np.array_equal(sliced.scores, plain.scores)


def test_nano_sliced_detect_encodes_text_once(nano):
    nano.clear_cache()
    d = nano.detect(SYNTH, ["pink cross", "cyan star"], box_threshold=0.3, slices=(256, 256), overlap=0.2)
    assert len(nano._text_cache) == 1  # one prompt for every tile and the whole image
    h, w = Image.open(SYNTH).size[::-1]
    assert len(d) and (d.xyxy[:, [0, 2]] <= w).all() and (d.xyxy[:, [1, 3]] <= h).all()
    g = nano.ground(SYNTH, "a pink cross and a cyan star", ["a pink cross", "a cyan star"], slices=256,
                    box_threshold=0.3)
    assert set(g.labels) <= {"a pink cross", "a cyan star"}
    r = nano.refer(SYNTH, "the pink cross", slices=256, merge="nms")
    assert len(r) == 1


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, word", [
    ({"height": 0, "width": 640}, "slices"),
    ({"height": 640, "width": -1}, "slices"),
    ({"height": 64, "width": 64, "overlap": 1.0}, "overlap"),
    ({"height": 64, "width": 64, "overlap": -0.1}, "overlap"),
    ({"height": 64, "width": 64, "merge": "wbf"}, "merge"),
    ({"height": 64, "width": 64, "threshold": 0}, "threshold"),
])
def test_bad_settings_are_named_value_errors(kwargs, word):
    with pytest.raises(SliceError, match=word) as e:
        SliceSpec(**kwargs)
    assert isinstance(e.value, ValueError)


def test_bad_text_and_detector_arguments(nano):
    with pytest.raises(SliceError, match="0 pixels"):
        parse_slices("0x640")
    with pytest.raises(SliceError, match="HEIGHTxWIDTH"):
        parse_slices("big")
    assert parse_slices("640x480") == (640, 480) and parse_slices("512") == (512, 512)
    with pytest.raises(SliceError, match="overlap"):
        nano.detect(SYNTH, ["pink cross"], slices=(64, 64), overlap=1.5)


@pytest.mark.parametrize("args, word", [
    (["--slices", "0x640"], "0 pixels"), (["--slices", "640x640", "--overlap", "1"], "overlap"),
    (["--overlap", "0.5"], "add --slices"), (["--slices", "64", "--merge", "wbf"], "merge"),
])
def test_cli_bad_slicing_exits_2_with_the_reason(args, word, tmp_path):
    from groundscope.cli import app

    for verb in (["detect", "--classes", "red"], ["refer", "--expression", "the red one"]):
        res = CliRunner().invoke(app, [verb[0], str(SYNTH), *verb[1:], "--model", "nano", "--out", str(tmp_path),
                                       *args])
        assert res.exit_code == 2 and word in res.output, res.output


# ---------------------------------------------------------------------------- entry points
def test_cli_detect_with_slices_writes_the_sliced_answer(nano, tmp_path, monkeypatch):
    from groundscope.cli import app
    from groundscope.models import loading

    monkeypatch.setattr(loading, "load_detector", lambda name, *a, **k: nano)
    res = CliRunner().invoke(app, ["detect", str(SYNTH), "--classes", "pink cross,cyan star", "--model", "nano",
                                   "--out", str(tmp_path), "--slices", "256x256", "--merge", "nms"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "synth_shapes.json").read_text())
    want = nano.detect(SYNTH, ["pink cross", "cyan star"], box_threshold=0.3, slices=(256, 256), merge="nms")
    assert [d["box"] for d in rec["detections"]] == [[round(float(v), 2) for v in b] for b in want.xyxy]


def test_label_eval_and_serve_slice(nano, tmp_path):
    from fastapi.testclient import TestClient

    from groundscope.data.synth import generate_world, small_layout
    from groundscope.evaluate.protocols import PLAIN
    from groundscope.evaluate.run import run_evaluation
    from groundscope.label import LabelSettings, label_images
    from groundscope.label.run import local_executor
    from groundscope.serve.app import create_app

    world = tmp_path / "w"
    generate_world(world, 1, seed=5, split="test", layout=small_layout((512, 512)))
    spec = SliceSpec(256, 256)
    image = world / "images/000000.png"
    classes = ["red circle", "blue square", "green star"]
    want = sliced_detect(nano, image, classes, spec, box_threshold=0.1, max_detections=20)

    settings = LabelSettings(model="nano", classes=tuple(classes), box_threshold=0.1, max_detections=20, slicing=spec)
    assert LabelSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    label_images([image], tmp_path / "labels.json", "coco", settings, executor=local_executor(settings, lambda: nano))
    coco = json.loads((tmp_path / "labels.json").read_text())
    assert len(coco["annotations"]) == len(want) and coco["info"]["slicing"]["slices"] == [256, 256]

    metrics = run_evaluation(nano, "coco", world / "coco_all.json", world, tmp_path / "eval", settings=PLAIN,
                             max_detections=50, progress=False, slicing=spec)
    assert metrics["slicing"] == spec.record() and 0.0 <= metrics["AP50"] <= 1.0
    journal = json.loads((tmp_path / "eval" / "results.jsonl").read_text().splitlines()[0])
    assert journal["run"]["slicing"] == spec.record()

    with TestClient(create_app(nano)) as client:
        files = {"image": ("a.png", image.read_bytes(), "image/png")}
        r = client.post("/v1/detect", files=files, data={"classes": ",".join(classes), "box_threshold": "0.1",
                                                         "max_detections": "20", "slices": "256x256"})
        assert r.status_code == 200, r.text
        assert [d["label"] for d in r.json()["detections"]] == want.labels
        bad = client.post("/v1/detect", files=files, data={"classes": "red circle", "slices": "256",
                                                           "overlap": "1.2"})
        assert bad.status_code == 400 and "overlap" in bad.json()["error"]


def test_small_world_layout_and_regions(tmp_path):
    from groundscope.data.synth import write_world_regions

    world = tmp_path / "w"
    from groundscope.cli import app

    res = CliRunner().invoke(app, ["synth", "--out", str(world), "--n", "2", "--seed", "3", "--split", "test",
                                   "--small", "--size", "1024x768"])
    assert res.exit_code == 0, res.output
    meta = json.loads((world / "meta.json").read_text())
    assert meta["layout"]["size"] == [1024, 768]
    coco = json.loads((world / "coco_all.json").read_text())
    assert {(im["width"], im["height"]) for im in coco["images"]} == {(1024, 768)}
    areas = [a["area"] for a in coco["annotations"]]
    assert len(areas) >= 6 and sum(a < 32 ** 2 for a in areas) >= len(areas) // 3  # mostly small objects
    for f in ("coco_base.json", "coco_novel.json", "coco_synonyms.json", "odvg_grounding.jsonl",
              "groundingcap.jsonl", "refexp.json"):
        assert (world / f).is_file()
    assert write_world_regions(world)["regions"] == len(areas)  # redrawn from meta.json's layout, verified
    res = CliRunner().invoke(app, ["synth", "--out", str(world), "--n", "1", "--size", "768x512"])
    assert res.exit_code == 2 and "--small" in res.output
