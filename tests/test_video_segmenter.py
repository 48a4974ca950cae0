"""`load_video_segmenter` and its streaming session, held to transformers' own streaming API on a tiny random SAM 2.

The reference drives ``Sam2VideoModel`` as transformers documents it: ``Sam2VideoProcessor.init_video_session``
without a video, ``add_inputs_to_inference_session`` on the prompted frame, then ``model(session, frame=pixels)``
per frame. transformers' processor class is made without its image processor (which needs torchvision): its prompt
methods read only ``target_size`` and ``point_pad_value``. Pixels come from `Sam2Processing` on both sides (its own
parity with transformers' image processor is tests/test_segmenter.py's).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

H, W = 96, 160
BOXES = [[10, 10, 60, 50], [80, 20, 150, 90]]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is ~10 ms a frame on one thread and 100x slower when its threads fight another job's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vs(tiny_sam2_video_dir):
    from groundscope.models.video_segmenter import load_video_segmenter

    return load_video_segmenter(tiny_sam2_video_dir)


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _processor(vs):
    from transformers import Sam2VideoProcessor

    proc = object.__new__(Sam2VideoProcessor)
    proc.target_size = vs.processing.size[0]
    proc.point_pad_value = -10
    return proc


def _reference(vs, frames, start: int, obj_ids, **inputs) -> dict[int, dict[int, tuple[np.ndarray, float]]]:
    """transformers' streaming API from frame `start` on: {frame: {obj_id: (mask, score)}}."""
    proc = _processor(vs)
    session = proc.init_video_session(inference_device="cpu", dtype=torch.float32)
    proc.add_inputs_to_inference_session(session, frame_idx=start, obj_ids=list(obj_ids), original_size=(H, W),
                                         **inputs)
    out = {}
    for i in range(start, len(frames)):
        pixels = vs.processing.pixel_values([Image.fromarray(frames[i])])
        res = vs.model(session, frame=pixels, frame_idx=i)
        masks = vs.processing.masks(res.pred_masks, (H, W))[:, 0].numpy()
        scores = torch.sigmoid(res.object_score_logits.float()).reshape(-1).numpy()
        out[i] = {int(o): (masks[k], float(scores[k])) for k, o in enumerate(res.object_ids)}
    return out


def _assert_same(got: dict, ref: dict, obj_id: int) -> None:
    for i in ref:
        mask, score = got[i][obj_id]
        assert np.array_equal(mask, ref[i][obj_id][0]), f"frame {i}, object {obj_id}: masks differ"
        assert abs(score - ref[i][obj_id][1]) <= 1e-5, f"frame {i}, object {obj_id}: score differs"


def test_step_equals_transformers_streaming(vs):
    frames = _frames(20)
    ref = _reference(vs, frames, 0, [1, 2], input_boxes=[BOXES])
    session = vs.start()
    got = {0: session.add(0, frames[0], [1, 2], box=BOXES)}
    for i in range(1, len(frames)):
        got[i] = session.step(frames[i])
    assert set(got[19]) == {1, 2}
    _assert_same(got, ref, 1)
    _assert_same(got, ref, 2)
    # the masks are not trivial (a comparison of empty or full masks would prove nothing)
    areas = [got[i][k][0].mean() for i in got for k in (1, 2)]
    assert 0.05 < min(areas) and max(areas) < 0.98


def test_objects_added_mid_stream_and_removed(vs):
    """Object 2, prompted (box + clicks) on frame 6 after object 1 has been tracked since frame 0, follows exactly
    the trajectory of a transformers session that starts with it on frame 6; object 1 is untouched by its arrival
    and by its removal on frame 14."""
    frames = _frames(22, seed=1)
    clicks = [[100, 50], [120, 60]]
    ref1 = _reference(vs, frames, 0, [1], input_boxes=[[BOXES[0]]])
    ref2 = _reference(vs, frames[:14], 6, [2], input_boxes=[[BOXES[1]]], input_points=[[clicks]],
                      input_labels=[[[1, 1]]])
    session = vs.start()
    got = {0: session.add(0, frames[0], 1, box=BOXES[0])}
    for i in range(1, len(frames)):
        if i == 14:
            session.remove(2)
        got[i] = session.step(frames[i])
        if i == 6:
            added = session.add(6, None, 2, box=BOXES[1], points=clicks)
            assert set(added) == {2}
            got[i].update(added)
    _assert_same(got, ref1, 1)
    _assert_same(got, ref2, 2)
    assert set(got[13]) == {1, 2} and set(got[14]) == {1}
    assert session.object_ids == [1]


def test_mask_prompt_equals_transformers(vs):
    frames = _frames(8, seed=2)
    mask = np.zeros((H, W), bool)
    mask[20:70, 30:90] = True
    ref = _reference(vs, frames, 0, [5], input_masks=[mask])
    session = vs.start()
    got = {0: session.add(0, frames[0], 5, mask=mask)}
    for i in range(1, len(frames)):
        got[i] = session.step(frames[i])
    _assert_same(got, ref, 5)


def test_pruned_session_equals_unpruned_past_the_window(vs):
    """Over 2.5 windows of frames (with an object added on the way) pruning drops only what is never read: the
    outputs are identical, and the pruned session holds one frame and at most `window` tracked outputs per object
    while the unpruned one holds them all."""
    n = int(2.5 * vs.window) + 3
    frames = _frames(n, seed=3)
    runs = {}
    for prune in (True, False):
        session = vs.start(prune=prune)
        got = [session.add(0, frames[0], 1, box=BOXES[0])]
        for i in range(1, n):
            got.append(session.step(frames[i]))
            if i == 4:
                got[-1].update(session.add(4, None, 2, box=BOXES[1]))
        runs[prune] = (got, session.stored_frames())
    for a, b in zip(runs[True][0], runs[False][0]):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k][0], b[k][0]) and a[k][1] == b[k][1]
    kept, full = runs[True][1], runs[False][1]
    assert kept == {"pixels": 1, "tracked_outputs": 2 * vs.window, "conditioning_outputs": 2}
    assert full["pixels"] == n and full["tracked_outputs"] == (n - 1) + (n - 5)


def test_a_frame_without_objects_can_be_prompted_later(vs):
    frames = _frames(4, seed=4)
    session = vs.start()
    assert session.step(frames[0]) == {} and session.step(frames[1]) == {}
    got = session.add(1, None, 3, box=BOXES[0])
    assert set(got) == {3} and session.frame_index == 1
    assert set(session.step(frames[2])) == {3}


def test_session_errors_name_the_fix(vs):
    from groundscope.models.segmenter import PromptError

    frames = _frames(3)
    session = vs.start()
    with pytest.raises(PromptError, match="frame 0 is new to the session: pass its image"):
        session.add(0, None, 1, box=BOXES[0])
    session.add(0, frames[0], 1, box=BOXES[0])
    session.step(frames[1])
    with pytest.raises(PromptError, match="frame 0 is behind the session, which is on frame 1"):
        session.add(0, frames[0], 2, box=BOXES[1])
    with pytest.raises(PromptError, match=r"frame 3 is ahead of the session, which is on frame 1 with live objects \[1\]; session.step"):
        session.add(3, frames[2], 2, box=BOXES[1])
    with pytest.raises(PromptError, match=r"box 0 \(200, 10, 250, 50\) lies outside the 160x96 image"):
        session.add(1, None, 2, box=[200, 10, 250, 50])
    with pytest.raises(PromptError, match="mask prompt"):
        session.add(1, None, 2, mask=np.zeros((H, W), bool))
    with pytest.raises(PromptError, match="is 40x30 but this video's frames are 160x96"):
        session.step(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(PromptError, match="object 9 is not tracked; live objects: \\[1\\]"):
        session.remove(9)


def test_loader_errors(tmp_path, tiny_sam2_video_dir, monkeypatch):
    from conftest import build_tiny_segmenter

    from groundscope.models.hub import ModelLoadError
    from groundscope.models.video_segmenter import load_video_segmenter

    image_only = build_tiny_segmenter("sam2", tmp_path / "sam2-image")
    with pytest.raises(ModelLoadError, match="image-only 'sam2' model, with no video memory .*sam2.1-hiera-tiny"):
        load_video_segmenter(image_only)
    with pytest.raises(ModelLoadError, match="is a detector .*not a segmenter"):
        load_video_segmenter("gdino-tiny")
    with pytest.raises(ModelLoadError, match="not a local directory, a known name"):
        load_video_segmenter("no-such-tracker")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelLoadError, match=r"'sam2.1-hiera-tiny' \(facebook/sam2.1-hiera-tiny\) is not in the "
                                             "local cache and HF_HUB_OFFLINE is set"):
        load_video_segmenter("sam2.1-hiera-tiny")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_video_segmenter(tiny_sam2_video_dir, precision="int4")


def test_bf16_session_runs(tiny_sam2_video_dir):
    from groundscope.models.video_segmenter import load_video_segmenter

    session = load_video_segmenter(tiny_sam2_video_dir, precision="bf16").start()
    frames = _frames(3)
    session.add(0, frames[0], 1, box=BOXES[0])
    mask, score = session.step(frames[1])[1]
    assert mask.shape == (H, W) and mask.dtype == bool and 0.0 <= score <= 1.0
