"""Promptable segmenters: groundscope's masks and scores equal transformers' own processor + model +
post-processing path on tiny random SAM / SAM 2 / SAM 3 models; the SAM 2-family port equals transformers'
torchvision processor (fixture); one image embedding per image; prompts checked; loader errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_segmenter

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture(scope="module")
def seg_dirs(tmp_path_factory):
    return {k: build_tiny_segmenter(k, tmp_path_factory.mktemp(f"seg-{k}")) for k in ("sam", "sam2", "sam3")}


def _image(h=90, w=140, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _reference_sam(folder, image, **prompts):
    """transformers' documented SAM path, as Describe Anything's official apply_sam runs it: processor ->
    model(**inputs) -> image_processor.post_process_masks -> argmax of iou_scores per prompt."""
    from PIL import Image
    from transformers import SamModel, SamProcessor

    model = SamModel.from_pretrained(folder).eval()
    proc = SamProcessor.from_pretrained(folder)
    inputs = proc(Image.fromarray(image), return_tensors="pt", **prompts)
    with torch.no_grad():
        out = model(**inputs)
    masks = proc.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                    inputs["reshaped_input_sizes"])[0]
    iou = out.iou_scores[0]
    best = iou.argmax(-1)
    n = len(best)
    return masks[torch.arange(n), best].numpy(), iou[torch.arange(n), best].numpy()


def test_sam_equals_transformers_path(seg_dirs):
    from groundscope.models.segmenter import load_segmenter

    image = _image()
    seg = load_segmenter(seg_dirs["sam"])
    boxes = [[10, 10, 60, 50], [20, 30, 100, 80], [0, 0, 140, 90]]
    got = seg.segment(image, boxes=boxes)
    ref_masks, ref_scores = _reference_sam(seg_dirs["sam"], image, input_boxes=[boxes])
    assert got.masks.shape == (3, 90, 140) and got.masks.dtype == bool
    assert np.array_equal(got.masks, ref_masks)
    np.testing.assert_allclose(got.scores, ref_scores, atol=1e-6)
    pts, labels = [[(20, 20), (40, 30)], [(70, 60), (10, 80)]], [[1, 1], [1, 0]]
    got = seg.segment(image, points=pts, point_labels=labels)
    ref_masks, ref_scores = _reference_sam(seg_dirs["sam"], image, input_points=[[list(map(list, p)) for p in pts]],
                                           input_labels=[labels])
    assert np.array_equal(got.masks, ref_masks)
    np.testing.assert_allclose(got.scores, ref_scores, atol=1e-6)


@pytest.mark.parametrize("kind", ["sam2", "sam3"])
def test_sam2_family_equals_the_models_own_forward(seg_dirs, kind):
    """The embedding reused across prompts gives what the model's full forward from pixels gives."""
    import transformers

    from groundscope.models.sam2_processing import Sam2Processing
    from groundscope.models.segmenter import FAMILIES, load_segmenter

    image = _image(77, 120, seed=1)
    seg = load_segmenter(seg_dirs[kind])
    boxes = [[5, 6, 60, 50], [30, 10, 110, 70]]
    pts, labels = [[(20, 20)], [(70, 40), (90, 50)]], [[1], [1, 0]]
    got = seg.segment(image, boxes=boxes, points=pts, point_labels=labels)

    from PIL import Image

    cls = getattr(transformers, FAMILIES[seg.model.config.model_type][0])
    model = cls.from_pretrained(seg_dirs[kind]).eval()
    proc = Sam2Processing.from_folder(seg_dirs[kind])
    with torch.no_grad():
        out = model(pixel_values=proc.pixel_values([Image.fromarray(image)]),
                    **proc.prompts((77, 120), boxes, [list(map(list, p)) for p in pts], labels))
    masks = proc.masks(out.pred_masks[0], (77, 120))
    best = out.iou_scores[0].argmax(-1)
    assert np.array_equal(got.masks, masks[torch.arange(2), best].numpy())
    np.testing.assert_allclose(got.scores, out.iou_scores[0][torch.arange(2), best].numpy(), atol=1e-6)


def test_sam2_processing_equals_transformers_processor():
    """groundscope's port against Sam2Processor / Sam3ImageProcessor (run where torchvision loads:
    tests/fixtures/make_sam2_processing.py)."""
    from PIL import Image

    from groundscope.models.sam2_processing import Sam2Processing

    sys.path.insert(0, str(FIXTURES))
    try:
        from make_sam2_processing import inputs
    finally:
        sys.path.remove(str(FIXTURES))
    image, boxes, points, labels, logits = inputs()
    ref = np.load(FIXTURES / "sam2_processing.npz")
    proc = Sam2Processing((64, 64))
    np.testing.assert_allclose(proc.pixel_values([Image.fromarray(image)]).numpy(), ref["pixel_values"], atol=1e-6)
    enc = proc.prompts(image.shape[:2], boxes, points, labels)
    for key in ("input_boxes", "input_points", "input_labels"):
        np.testing.assert_array_equal(enc[key].numpy(), ref[key])
    masks = proc.masks(logits, image.shape[:2]).numpy()
    want = np.unpackbits(ref["masks"])[: masks.size].reshape(tuple(ref["masks_shape"])).astype(bool)
    assert np.array_equal(masks, want)
    sam3 = Sam2Processing((56, 56), (0.5,) * 3, (0.5,) * 3)
    np.testing.assert_allclose(sam3.pixel_values([Image.fromarray(image)]).numpy(), ref["sam3_pixel_values"],
                               atol=1e-6)


def test_one_embedding_per_image_and_batches(seg_dirs, monkeypatch):
    from groundscope.models.segmenter import load_segmenter

    seg = load_segmenter(seg_dirs["sam2"])
    calls = []
    real = seg.model.get_image_embeddings
    monkeypatch.setattr(seg.model, "get_image_embeddings", lambda px: calls.append(px.shape[0]) or real(px))
    images = [_image(seed=s) for s in range(3)]
    boxes = [[[10, 10, 60, 50], [20, 30, 100, 80]], [[0, 0, 50, 50]], [[5, 5, 30, 30], [1, 1, 9, 9], [50, 20, 90, 80]]]
    batched = seg.segment_batch(images, boxes=boxes, batch_size=4)
    assert calls == [3]  # three images, one encoder call, every prompt of an image reusing its embedding
    for im, b, res in zip(images, boxes, batched):
        alone = seg.segment(im, boxes=b)
        assert np.array_equal(res.masks, alone.masks)
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-5)


def test_add_masks_to_detections(seg_dirs):
    from groundscope.detections import Detections
    from groundscope.models.segmenter import load_segmenter

    seg = load_segmenter(seg_dirs["sam"])
    image = _image()
    dets = Detections([[10, 10, 60, 50], [-5, 20, 200, 95]], [0.9, 0.4], [0, 1], ["a", "b"])
    with_masks = seg.add_masks(image, dets)
    assert with_masks.mask_array().shape == (2, 90, 140)
    clipped = seg.segment(image, boxes=[[10, 10, 60, 50], [0, 20, 140, 90]]).masks
    assert np.array_equal(with_masks.mask_array(), clipped)  # boxes clipped to the image first
    assert seg.add_masks(image, Detections.empty()).masks == []


def test_prompt_errors_name_the_prompt(seg_dirs):
    from groundscope.models.segmenter import PromptError, load_segmenter

    seg = load_segmenter(seg_dirs["sam"])
    image = _image()
    with pytest.raises(PromptError, match=r"box 0 \(200, 10, 260, 50\) lies outside the 140x90 image"):
        seg.segment(image, boxes=[[200, 10, 260, 50]])
    with pytest.raises(PromptError, match="inverted"):
        seg.segment(image, boxes=[[60, 10, 10, 50]])
    with pytest.raises(PromptError, match=r"point \(150, 5\) of object 0 is off the 140x90 image"):
        seg.segment(image, points=[[(150, 5)]])
    with pytest.raises(PromptError, match="one label per point"):
        seg.segment(image, points=[[(10, 5), (20, 5)]], point_labels=[[1]])
    with pytest.raises(PromptError, match="2 point groups for 1 boxes"):
        seg.segment(image, boxes=[[1, 1, 9, 9]], points=[[(2, 2)], [(3, 3)]])
    assert seg.segment(image).masks.shape == (0, 90, 140)


def test_loader_errors(tiny_mm_dir, monkeypatch):
    from groundscope.models.hub import ModelLoadError
    from groundscope.models.loading import load_detector
    from groundscope.models.segmenter import load_segmenter

    with pytest.raises(ModelLoadError, match="'mm-grounding-dino' model, not a SAM-family segmenter"):
        load_segmenter(tiny_mm_dir)
    with pytest.raises(ModelLoadError, match="is a segmenter .*load_segmenter"):
        load_detector("sam-vit-base")
    with pytest.raises(ModelLoadError, match="is a detector .*not a segmenter"):
        load_segmenter("gdino-tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tiny_mm_dir.parent / "empty-hf-home"))
    with pytest.raises(ModelLoadError, match=r"'sam2.1-hiera-tiny' \(facebook/sam2.1-hiera-tiny\) is not in the "
                                             "local cache and HF_HUB_OFFLINE is set"):
        load_segmenter("sam2.1-hiera-tiny")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_segmenter("sam-nano", precision="int4")


def test_bf16_segmenter_runs(seg_dirs):
    """bf16 weights and activations, masks post-processed in fp32 (a random model's logits sit near 0, so only the
    shapes and the predicted IoU are compared here)."""
    from groundscope.models.segmenter import load_segmenter

    image = _image()
    boxes = [[10, 10, 60, 50], [20, 30, 100, 80]]
    fp32 = load_segmenter(seg_dirs["sam"]).segment(image, boxes=boxes)
    bf16 = load_segmenter(seg_dirs["sam"], precision="bf16").segment(image, boxes=boxes)
    assert bf16.masks.shape == fp32.masks.shape
    assert bf16.masks.dtype == bool
    np.testing.assert_allclose(bf16.scores, fp32.scores, atol=0.02)


def test_detect_with_masks_from_python_and_the_cli(tiny_mm_dir, seg_dirs, example_photo, tmp_path):
    """detect -> segment: every kept box gets the mask the segmenter gives for it; the CLI's JSON carries it as
    RLE, and a segmenter that does not load is one line, exit code 2."""
    import json

    from typer.testing import CliRunner

    from groundscope.cli import app
    from groundscope.images import load_image
    from groundscope.masks import decode
    from groundscope.models.loading import load_detector
    from groundscope.models.segmenter import load_segmenter

    det = load_detector(tiny_mm_dir)
    seg = load_segmenter(seg_dirs["sam"])
    plain = det.detect(example_photo, ["cat", "sofa"], max_detections=5)
    got = det.detect(example_photo, ["cat", "sofa"], max_detections=5, masks=True, segmenter=seg)
    image = load_image(example_photo)
    assert np.array_equal(got.xyxy, plain.xyxy)
    assert got.mask_array().shape == (5, image.height, image.width)
    assert np.array_equal(got.mask_array(), seg.add_masks(image, plain).mask_array())
    refer = det.refer(example_photo, "the cat", masks=True, segmenter=seg)
    assert refer.mask_array().shape[0] == 1

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["detect", str(example_photo), "-c", "cat,sofa", "-m", str(tiny_mm_dir), "-k", "5",
                                   "-t", "0", "--masks", "--segmenter", str(seg_dirs["sam"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / f"{example_photo.stem}.json").read_text())
    rles = [d["mask"] for d in record["detections"]]
    assert len(rles) == 5 and np.array_equal(decode(rles), got.mask_array())
    res = CliRunner().invoke(app, ["detect", str(example_photo), "-c", "cat", "-m", str(tiny_mm_dir), "--masks",
                                   "--segmenter", str(tiny_mm_dir), "-o", str(out)])
    assert res.exit_code == 2 and "not a SAM-family segmenter" in res.output
