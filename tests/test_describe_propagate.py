"""DAM on video as the official pipeline runs it (demo_video.py): the region given on one frame is propagated by a
SAM 2 video model, 8 frames are sampled among those whose mask is not empty, and each frame's focal prompt is
that frame's mask. Held to a hand-driven `VideoSession` on a tiny random SAM 2 and a tiny random DAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

H, W = 96, 160
BOX = [20, 20, 90, 70]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vs(tiny_sam2_video_dir):
    from groundscope.models.video_segmenter import load_video_segmenter

    return load_video_segmenter(tiny_sam2_video_dir)


@pytest.fixture(scope="module")
def describer(dam_dir):
    from groundscope.describe import load_describer

    return load_describer(dam_dir, device="cpu")


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def by_hand(vs, clip, start, **prompt):
    """{frame: mask} from a session prompted on `start` and stepped to the end."""
    session = vs.start()
    out = {start: session.add(start, clip[start], 1, **prompt)[1][0]}
    for t in range(start + 1, len(clip)):
        out[t] = session.step(clip[t])[1][0]
    return out


def test_propagated_masks_and_official_sampling(vs):
    from groundscope.describe.propagate import propagate_region

    clip = frames(14)
    ref = by_hand(vs, clip, 3, box=BOX)
    got = propagate_region(clip, {"box": BOX}, vs, frame=3)
    visible = [t for t in sorted(ref) if ref[t].any()]
    assert got.visible == visible and got.total == 14
    # demo_video.py: np.linspace(0, len(non_empty) - 1, 8, dtype=int) over the non-empty frames
    assert len(visible) > 8  # the case the demo samples (the tiny model keeps the object in view)
    assert got.indices == [visible[i] for i in np.linspace(0, len(visible) - 1, 8, dtype=int)]
    assert all(t >= 3 for t in got.indices) and len(got.indices) == 8
    for k, t in enumerate(got.indices):
        assert np.array_equal(got.masks[k], ref[t]) and np.array_equal(got.frames[k], clip[t])
        ys, xs = np.nonzero(ref[t])
        np.testing.assert_array_equal(got.boxes[k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_mask_and_point_prompts_go_to_sam2_as_such(vs):
    from groundscope.describe.propagate import propagate_region

    clip = frames(5, seed=2)
    mask = np.zeros((H, W), bool)
    mask[30:60, 40:100] = True
    ref = by_hand(vs, clip, 0, mask=mask)
    got = propagate_region(clip, {"mask": mask}, vs)
    assert all(np.array_equal(m, ref[t]) for m, t in zip(got.masks, got.indices))
    ref = by_hand(vs, clip, 1, points=[[50, 40], [70, 45]])
    got = propagate_region(clip, {"points": [[50, 40], [70, 45]]}, vs, frame=1)
    assert all(np.array_equal(m, ref[t]) for m, t in zip(got.masks, got.indices))


def test_describe_video_with_a_segmenter_describes_the_moving_masks(describer, vs, monkeypatch):
    from groundscope.describe.propagate import propagate_region

    clip = frames(12, seed=3)
    prop = propagate_region(clip, {"box": BOX}, vs, frame=2)
    seen = {}
    real = describer.model.generate

    def spy(images, masks, **kw):
        seen.update(images=images, masks=masks)
        return real(images, masks, **kw)

    monkeypatch.setattr(describer.model, "generate", spy)
    out = describer.describe_video(clip, {"box": BOX}, frame=2, segmenter=vs)
    assert out.ok and out.text and out.frames == prop.indices
    assert out.frame_boxes == [[float(v) for v in b] for b in prop.boxes]
    (imgs,), (masks,) = seen["images"], seen["masks"]
    assert all(np.array_equal(a, b) for a, b in zip(imgs, prop.frames))
    assert all(np.array_equal(a, b) for a, b in zip(masks, prop.masks))


def test_bad_video_input_is_named(describer, vs, tmp_path):
    clip = frames(4)
    out = describer.describe_video(clip, {"box": BOX}, frame=9, segmenter=vs)
    assert not out.ok and "frame 9 is past the end of the video (4 frames)" in out.error
    out = describer.describe_video(clip, {"box": [500, 500, 600, 600]}, segmenter=vs)
    assert not out.ok and "region" in out.error
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 20)
    out = describer.describe_video(bad, {"box": BOX}, segmenter=vs)
    assert not out.ok and "bad.mp4" in out.error
    with pytest.raises(ValueError, match="one region, on one frame"):
        describer.describe_video(clip, [{"box": BOX}] * 4, segmenter=vs)


def test_cli_describe_video_track_with_a_segmenter(dam_dir, tiny_sam2_video_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from groundscope.cli import app

    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(frames(6, seed=4)):
        Image.fromarray(f).save(folder / f"{k:03d}.png")
    res = CliRunner().invoke(app, ["describe", str(folder), "-m", str(dam_dir), "--box", "20,20,90,70", "--frame",
                                   "1", "--video-segmenter", str(tiny_sam2_video_dir), "--json",
                                   "-o", str(tmp_path / "v.png")])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    (r,) = rec["regions"]
    assert r["text"] and min(r["frames"]) >= 1 and len(r["frames"]) == 8
