"""Describe Anything prompted as its official pipeline: with a segmenter, a box, clicks or a scribble become the
SAM mask the official code would make (box prompt; positive clicks; 8 scribble pixels drawn with seed 0) before
the focal prompt, one image embedding for all of an image's regions; without one, the stand-in masks and a
one-time notice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from groundscope.describe import load_describer
from groundscope.describe.regions import scribble_points
from groundscope.models.segmenter import load_segmenter

IMAGE = (np.random.RandomState(3).rand(96, 128, 3) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def seg(tiny_sam_dir):
    return load_segmenter(tiny_sam_dir)


def test_scribble_points_are_the_official_draw():
    strokes = np.zeros((40, 50), bool)
    strokes[10, 5:45] = True
    strokes[12:30, 20] = True
    got = scribble_points(strokes)
    # demo_simple.py: coords = np.stack(np.nonzero(mask)[::-1], 1); np.random.seed(0); choice(n, min(n, 8), False)
    ys, xs = np.nonzero(strokes)
    coords = np.stack((xs, ys), axis=1)
    np.random.seed(0)
    want = coords[np.random.choice(len(coords), size=8, replace=False)]
    np.testing.assert_array_equal(got, want)
    assert len(scribble_points(np.zeros((4, 4), bool))) == 0
    tiny = np.zeros((4, 4), bool)
    tiny[1, 1:3] = True
    assert len(scribble_points(tiny)) == 2  # fewer than 8 stroke pixels: all of them


def test_regions_become_the_segmenters_masks(dam_dir, seg, monkeypatch):
    dam = load_describer(dam_dir, device="cpu", segmenter=seg)
    calls = []
    real = seg.embed
    monkeypatch.setattr(seg, "embed", lambda images: calls.append(len(images)) or real(images))
    strokes = np.zeros(IMAGE.shape[:2], bool)
    strokes[40, 30:90] = True
    box, clicks = (20, 10, 90, 70), [(50, 40), (60, 45)]
    out = dam.describe(IMAGE, [{"box": box}, {"points": clicks}, {"scribble": strokes}], max_new_tokens=4)
    assert calls == [1]  # one embedding for the image's three regions
    assert all(r.ok for r in out), [r.error for r in out]
    want_box = seg.segment(IMAGE, boxes=[box]).masks[0]
    want_clicks = seg.segment(IMAGE, points=[clicks], point_labels=[[1, 1]]).masks[0]
    want_scribble = seg.segment(IMAGE, points=[scribble_points(strokes)]).masks[0]
    for r, want in zip(out, (want_box, want_clicks, want_scribble)):
        assert np.array_equal(r.mask, want)
    assert out[0].box == [float(v) for v in box]  # a box region keeps the box it was given


def test_expression_is_detected_then_segmented_then_described(dam_dir, seg, tiny_mm_dir):
    from groundscope.models.loading import load_detector

    det = load_detector(tiny_mm_dir)
    dam = load_describer(dam_dir, device="cpu", segmenter=seg)
    r = dam.describe_expression(IMAGE, "the cat", det, max_new_tokens=4)
    found = det.refer(IMAGE, "the cat")
    want = seg.segment(IMAGE, boxes=found.xyxy[:1]).masks[0]
    if r.ok:
        assert np.array_equal(r.mask, want)
    else:  # a random segmenter may find nothing in the box: then the region says so
        assert not want.any() and "the segmenter found no object" in r.error


def test_without_a_segmenter_the_fallback_masks_and_one_notice(dam_dir):
    dam = load_describer(dam_dir, device="cpu")
    strokes = np.zeros(IMAGE.shape[:2], bool)
    strokes[40:44, 30:90] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = dam.describe(IMAGE, [{"box": (20, 10, 90, 70)}, {"scribble": strokes}], max_new_tokens=4)
        dam.describe(IMAGE, box=(1, 1, 40, 40), max_new_tokens=4)
    notices = [w for w in caught if "not a SAM mask" in str(w.message)]
    assert len(notices) == 1 and "--segmenter" in str(notices[0].message)
    assert a[0].mask[10:70, 20:90].all() and a[0].mask.sum() == 60 * 70  # the filled rectangle
    assert np.array_equal(a[1].mask, strokes)  # the official "skip SAM" path: the strokes are the mask


def test_segmenter_errors_name_the_region(dam_dir, seg):
    dam = load_describer(dam_dir, device="cpu", segmenter=seg)
    out = dam.describe(IMAGE, [{"box": (200, 10, 260, 50), "name": "far"}, {"scribble": np.zeros((5, 5), bool)}],
                       max_new_tokens=4)
    assert "far" in out[0].error and "outside" in out[0].error
    assert "mask is 5x5" in out[1].error


def test_cli_describe_with_a_segmenter_and_a_scribble(dam_dir, tiny_sam_dir, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from groundscope.cli import app

    image = tmp_path / "im.png"
    Image.fromarray(IMAGE).save(image)
    strokes = np.zeros(IMAGE.shape[:2], np.uint8)
    strokes[40, 30:90] = 255
    Image.fromarray(strokes).save(tmp_path / "strokes.png")
    runner = CliRunner()
    res = runner.invoke(app, ["describe", str(image), "-m", str(dam_dir), "--box", "20,10,90,70", "--scribble",
                              str(tmp_path / "strokes.png"), "--segmenter", str(tiny_sam_dir), "--json",
                              "--max-new-tokens", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in record["regions"]] == ["box 20,10,90,70", f"scribble {tmp_path / 'strokes.png'}"]
    seg = load_segmenter(tiny_sam_dir)
    assert record["regions"][0]["area"] == int(seg.segment(IMAGE, boxes=[(20, 10, 90, 70)]).masks[0].sum())
    res = runner.invoke(app, ["describe", str(image), "-m", str(dam_dir), "--box", "20,10,90,70",
                              "--max-new-tokens", "4", "--device", "cpu"])
    assert res.exit_code == 0 and "add --segmenter" in res.output
