"""`groundscope export onnx`: one graph with dynamic image size, text length and batch, equal to PyTorch (1e-3)
when onnxruntime runs it, and `OnnxDetector` giving `GroundingDetector`'s detections from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import groundscope as gs
from groundscope.export.onnx import INPUT_NAMES, OnnxExportError, export_onnx, min_image_side
from groundscope.export.onnx_runtime import OnnxDetector, OnnxRuntimeError, open_session, text_inputs
from groundscope.images import preprocess
from groundscope.prompts import chunk_classes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(detector, path) of each tiny model (gdino and mm-gdino) exported once."""
    det = gs.load_detector(tiny_model_dir)
    path = export_onnx(det, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return det, path


@pytest.mark.parametrize("size, text", [
    ((480, 640), "cat. remote control. couch."),                                       # shorter than traced
    ((333, 997), "a dog. a very long name for a lamp. bed. traffic light. person."),    # odd sizes, longer text
])
def test_onnxruntime_equals_transformers_forward(exported, size, text):
    det, path = exported
    session = open_session(path)
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    g = torch.Generator().manual_seed(3)
    h, w = size
    px = torch.randn((1, 3, h, w), generator=g)
    ids = det.tokenizer(text)["input_ids"]
    feeds = text_inputs([ids], det.model.model.special_tokens.tolist())
    feeds.update(pixel_values=px.numpy(), pixel_mask=np.ones((1, h, w), np.int64))
    logits, boxes = session.run(["logits", "pred_boxes"], feeds)
    with torch.no_grad():  # transformers' own forward: masks and position ids built inside, from the ids
        ref = det.model(pixel_values=px, input_ids=torch.tensor([ids]))
    n = len(ids)
    assert logits.shape == (1, det.model.config.num_queries, det.max_text_len) and boxes.shape[-1] == 4
    np.testing.assert_allclose(logits[..., :n], ref.logits[..., :n].numpy(), atol=1e-3)
    assert np.isneginf(logits[..., n:]).all()
    np.testing.assert_allclose(boxes, ref.pred_boxes.numpy(), atol=1e-3)


def test_batch_of_padded_prompts_equals_each_alone(exported, example_photo):
    det, path = exported
    onnx = OnnxDetector(path)
    px = preprocess(gs.load_image(example_photo)).pixel_values
    short = chunk_classes(det.tokenizer, ["cat"], det.max_text_len)[0]
    long = chunk_classes(det.tokenizer, ["remote control", "a big lamp", "dog", "couch"], det.max_text_len)[0]
    logits, boxes = onnx.run(px, [short, long])
    assert logits.shape[0] == 2
    for row, prompt in enumerate([short, long]):
        alone_logits, alone_boxes = onnx.run(px, [prompt])
        n = prompt.num_tokens
        torch.testing.assert_close(logits[row, :, :n], alone_logits[0, :, :n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(boxes[row], alone_boxes[0], atol=1e-5, rtol=1e-5)


def test_onnx_detector_gives_the_detectors_results(exported, example_photo):
    det, path = exported
    onnx = OnnxDetector(path)  # tokenizer and settings from the file's metadata
    assert onnx.max_text_len == det.max_text_len and onnx.image_size == det.image_size
    det.image_size = onnx.image_size = (320, 480)  # smaller than the published resize, for the test's time
    classes = ["cat", "remote control", "couch", "bed"]
    a = det.detect(example_photo, classes, max_detections=20)
    b = onnx.detect(example_photo, classes, max_detections=20)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-3)
    np.testing.assert_allclose(b.xyxy, a.xyxy, atol=0.5)
    assert b.labels == a.labels
    g = onnx.ground([example_photo], "a cat on a couch", ["a cat", "a couch"], max_detections=5)
    np.testing.assert_allclose(g[0].scores, det.ground(example_photo, "a cat on a couch", ["a cat", "a couch"],
                                                      max_detections=5).scores, atol=1e-3)
    assert len(onnx.refer(example_photo, "the cat", top_k=2)) == 2


def test_errors_name_the_input_and_the_fix(exported, tmp_path, tiny_mm_dir):
    det, path = exported
    onnx = OnnxDetector(path)
    side = min_image_side(det.model.config)
    with pytest.raises(OnnxRuntimeError, match=f">= {side}"):
        onnx.run(torch.zeros((3, side - 1, 400)), chunk_classes(det.tokenizer, ["cat"], 256))
    with pytest.raises(OnnxRuntimeError, match="does not exist"):
        OnnxDetector(tmp_path / "missing.onnx")
    with pytest.raises(OnnxExportError, match="fp32"):
        export_onnx(gs.load_detector(tiny_mm_dir, precision="bf16"), tmp_path / "x.onnx")


def test_cli_export_onnx(tiny_mm_dir, tmp_path):
    from groundscope.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    res = runner.invoke(app, ["export", "onnx", "--model", str(tiny_mm_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0 and "onnxruntime vs PyTorch" in res.output
    res = runner.invoke(app, ["export", "onnx", "--model", str(tiny_mm_dir), "--out", str(tmp_path / "x.bin")])
    assert res.exit_code == 2 and ".onnx" in res.output
