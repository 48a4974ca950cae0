"""Images the model can run but the reference cannot: a strip so thin that the resized image holds fewer encoder
tokens than the detector has queries (`staged.fuse_and_decode_padded` then keeps one query per token)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import groundscope as gs
from groundscope.models.detector import _image_tokens

CLASSES = ["red circle", "cyan star"]


@pytest.fixture(scope="module")
def nano():
    return gs.load_detector("nano")


def _strip(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(8000, 20), (20, 8000), (1, 1), (500, 3)])
def test_extreme_sizes_give_detections_not_a_crash(nano, size):
    image = _strip(*size)
    prepared = nano.prepare([image])[0]
    h, w = prepared.pixel_values.shape[1:]
    if size[0] > 100 or size[1] > 100:
        assert _image_tokens(h, w) < nano.model.config.num_queries  # the case the reference's topk fails on
    dets = nano.detect(image, CLASSES, box_threshold=0.0)
    assert 0 < len(dets) <= _image_tokens(h, w) * len(CLASSES)  # at most one box per (query, class)
    assert np.isfinite(dets.xyxy).all()
    assert (dets.xyxy[:, [0, 2]] >= 0).all() and (dets.xyxy[:, [0, 2]] <= size[0]).all()
    assert (dets.xyxy[:, [1, 3]] >= 0).all() and (dets.xyxy[:, [1, 3]] <= size[1]).all()


def test_a_thin_strip_in_a_batch_gives_what_it_gives_alone(nano):
    strip, normal = _strip(8000, 20), Image.open("examples/synth_shapes.png")
    alone = nano.detect(strip, CLASSES, box_threshold=0.0)
    together = nano.detect([normal, strip, normal], CLASSES, box_threshold=0.0)
    assert len(together) == 3
    np.testing.assert_array_equal(together[1].xyxy, alone.xyxy)
    np.testing.assert_array_equal(together[1].scores, alone.scores)
    assert len(together[0]) > 0 and together[0].labels == together[2].labels
