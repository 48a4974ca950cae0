"""The Detections container: selection, NMS, serialisation, COCO export, supervision interop, drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from groundscope import Detections, annotate
from groundscope.detections import box_iou, nms_indices


def sample() -> Detections:
    return Detections(
        xyxy=[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 70], [0, 0, 10, 10]],
        scores=[0.9, 0.8, 0.7, 0.6],
        class_ids=[0, 0, 1, 1],
        labels=["cat", "cat", "dog", "dog"],
        spans=[[(0, 3)], [(0, 3)], [(5, 8)], [(5, 8)]],
    )


def test_selection():
    d = sample()
    assert len(d[d.scores > 0.75]) == 2
    assert d[[2]].labels == ["dog"] and d[1].scores.tolist() == pytest.approx([0.8])
    assert d[1:3].class_ids.tolist() == [0, 1] and d[1:3].spans == [[(0, 3)], [(5, 8)]]
    assert d.top(1).labels == ["cat"] and len(d.with_threshold(0.65)) == 3
    assert d.area.tolist() == [100, 100, 200, 100]
    with pytest.raises(ValueError, match="disagree"):
        Detections(xyxy=[[0, 0, 1, 1]], scores=[0.1, 0.2], class_ids=[0], labels=["a"])


def test_iou_and_nms_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[81 / 119, 0.0, 1.0]])
    d = sample()
    kept = d.nms(0.5)  # class-wise: box 1 overlaps box 0 (same class); box 3 is another class
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    agnostic = d.nms(0.5, class_agnostic=True)  # now box 3 (same place as box 0) goes too
    assert agnostic.scores.tolist() == pytest.approx([0.9, 0.7])
    assert nms_indices(np.zeros((0, 4)), np.zeros(0), None, 0.5).tolist() == []


def test_json_round_trip_and_merge():
    d = sample()
    back = Detections.from_json(d.to_json())
    np.testing.assert_array_equal(back.xyxy, d.xyxy)
    assert back.labels == d.labels and back.spans == d.spans and back.class_ids.tolist() == d.class_ids.tolist()
    merged = Detections.merge([d, Detections(xyxy=[[1, 2, 3, 4]], scores=[0.5], class_ids=[2], labels=["x"])])
    assert len(merged) == 5 and merged.spans[-1] == []
    with pytest.raises(ValueError, match="'box' and 'score'"):
        Detections.from_list([{"score": 1}])


def test_coco_results_export():
    d = sample()[[0, 2]]
    recs = d.to_coco_results(image_id=39769, category_ids=[17, 18])
    assert recs[0] == {"image_id": 39769, "category_id": 17, "bbox": [0.0, 0.0, 10.0, 10.0], "score": pytest.approx(0.9)}
    assert recs[1]["category_id"] == 18 and recs[1]["bbox"] == [50.0, 50.0, 10.0, 20.0]
    json.dumps(recs)


def test_supervision_round_trip():
    sv = pytest.importorskip("supervision")
    d = sample()
    s = d.to_supervision()
    assert isinstance(s, sv.Detections) and len(s) == 4 and list(s.data["class_name"]) == d.labels
    back = Detections.from_supervision(s)
    np.testing.assert_array_equal(back.xyxy, d.xyxy)
    assert back.labels == d.labels and back.class_ids.tolist() == d.class_ids.tolist()


def test_annotate_draws_boxes_in_class_colours():
    im = Image.new("RGB", (200, 100), (128, 128, 128))
    d = Detections(xyxy=[[20, 40, 120, 90]], scores=[0.9], class_ids=[0], labels=["cat"])
    out = annotate(im, d)
    assert out.size == im.size and im.getpixel((20, 60)) == (128, 128, 128)  # the input is not modified
    assert out.getpixel((20, 60)) != (128, 128, 128)  # left edge of the box is drawn
    assert out.getpixel((70, 65)) == (128, 128, 128)  # the inside is not
    assert out.getpixel((22, 30)) != (128, 128, 128)  # the label sits above the box
