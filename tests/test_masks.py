"""Masks in `Detections`: RLE equal to pycocotools' and to groundscope's numpy encoder, carried by every
operation, mask IoU / NMS against hand-computed cases, the files that carry them parse back, and the drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from groundscope import masks as mask_ops
from groundscope.data.regions import decode_segmentation, encode_rle
from groundscope.detections import Detections


def _masks():
    m = np.zeros((3, 20, 30), bool)
    m[0, 2:8, 3:9] = True  # 36 px
    m[1, 4:10, 3:9] = True  # 36 px, 24 shared with mask 0
    m[2, 10:15, 10:25] = True
    return m


def _dets():
    return Detections([[3, 2, 9, 8], [3, 4, 9, 10], [10, 10, 25, 15]], [0.9, 0.8, 0.5], [0, 0, 1],
                      ["a", "a", "b"], masks=_masks())


def test_rle_is_cocos_and_round_trips():
    m = _masks()
    rles = mask_ops.encode(m)
    for i, r in enumerate(rles):
        ref = coco_mask.encode(np.asfortranarray(m[i].astype(np.uint8)))
        assert r["counts"] == ref["counts"].decode() == encode_rle(m[i])["counts"]
        assert r["size"] == [20, 30]
        assert np.array_equal(decode_segmentation(r, 20, 30, use_pycocotools=False), m[i])
    assert np.array_equal(mask_ops.decode(rles), m)
    np.testing.assert_array_equal(mask_ops.area(rles), [36, 36, 75])
    np.testing.assert_array_equal(mask_ops.to_boxes(rles), [[3, 2, 9, 8], [3, 4, 9, 10], [10, 10, 25, 15]])
    iou = mask_ops.iou(rles, rles)
    assert iou[0, 1] == pytest.approx(24 / 48) and iou[0, 2] == 0 and iou[2, 2] == 1


def test_every_operation_carries_masks():
    d = _dets()
    m = _masks()
    assert np.array_equal(d[1].mask_array(), m[1:2])
    assert np.array_equal(d[np.array([True, False, True])].mask_array(), m[[0, 2]])
    assert np.array_equal(d.sort().mask_array(), m)
    assert np.array_equal(d.with_threshold(0.6).mask_array(), m[:2])
    merged = Detections.merge([d[:1], Detections.empty(), d[2:]])
    assert np.array_equal(merged.mask_array(), m[[0, 2]])
    with pytest.raises(ValueError, match="with masks and detections without"):
        Detections.merge([d[:1], Detections([[0, 0, 1, 1]], [0.1], [0], ["x"])])
    # box IoU of boxes 0 and 1 is 24/48 = 0.5, mask IoU the same here; at 0.4 both suppress box 1
    assert len(d.nms(0.4)) == 2 and len(d.nms(0.4, iou_type="mask")) == 2
    assert len(d.nms(0.6, iou_type="mask")) == 3
    # masks that differ from their boxes: two full boxes whose masks do not overlap
    m2 = np.zeros((2, 10, 10), bool)
    m2[0, :, :5] = True
    m2[1, :, 5:] = True
    two = Detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0], ["a", "a"], masks=m2)
    assert len(two.nms(0.5)) == 1 and len(two.nms(0.5, iou_type="mask")) == 2
    with pytest.raises(ValueError, match="needs detections with masks"):
        Detections([[0, 0, 1, 1]], [0.1], [0], ["x"]).nms(iou_type="mask")


def test_files_carry_masks():
    d = _dets()
    back = Detections.from_json(d.to_json())
    assert np.array_equal(back.mask_array(), _masks())
    recs = d.to_coco_results(7, category_ids=[1, 3])
    assert recs[2]["category_id"] == 3 and recs[2]["segmentation"]["size"] == [20, 30]
    json.dumps(recs)  # JSON-ready: counts are str
    assert np.array_equal(coco_mask.decode({"size": [20, 30], "counts": recs[0]["segmentation"]["counts"]}),
                          _masks()[0])
    sv = d.to_supervision()
    assert sv.mask.shape == (3, 20, 30) and np.array_equal(sv.mask, _masks())
    assert Detections.from_supervision(sv).masks == d.masks
    assert Detections([[0, 0, 1, 1]], [0.1], [0], ["x"]).to_supervision().mask is None


def test_mask_errors():
    with pytest.raises(ValueError, match="masks must be \\(N, H, W\\) with N = 1"):
        Detections([[0, 0, 1, 1]], [0.1], [0], ["x"], masks=np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="share one size"):
        Detections([[0, 0, 1, 1]] * 2, [0.1] * 2, [0] * 2, ["x"] * 2,
                   masks=mask_ops.encode(np.zeros((1, 4, 4), bool)) + mask_ops.encode(np.zeros((1, 5, 4), bool)))
    with pytest.raises(ValueError, match="carry no masks"):
        Detections.empty().mask_array()


def test_annotate_tints_masks_and_outlines_them():
    from groundscope.visualize import annotate

    image = np.full((100, 150, 3), 100, np.uint8)
    m = np.zeros((1, 100, 150), bool)
    m[0, 50:80, 50:120] = True
    d = Detections([[50, 50, 120, 80]], [0.9], [1], ["b"], masks=m)
    out = np.asarray(annotate(image, d, show_scores=False, line_width=1))
    plain = np.asarray(annotate(image, Detections([[50, 50, 120, 80]], [0.9], [1], ["b"]), show_scores=False,
                                line_width=1))
    assert (out[70, 90] != plain[70, 90]).any()  # inside the mask: tinted
    assert (out[95, 5] == plain[95, 5]).all()  # far outside: untouched
    with pytest.raises(ValueError, match="draw them on the image they were made for"):
        annotate(np.zeros((40, 30, 3), np.uint8), d)


def test_polygons_trace_the_mask():
    pytest.importorskip("cv2")
    m = _masks()[2]
    polys = mask_ops.to_polygons(m)
    assert len(polys) == 1
    xy = np.asarray(polys[0]).reshape(-1, 2)
    assert xy[:, 0].min() == 10 and xy[:, 0].max() == 24 and xy[:, 1].min() == 10 and xy[:, 1].max() == 14
