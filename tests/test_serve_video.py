"""POST /v1/describe with a short clip: the answer is what the describer gives for the same file (the CLI's
`describe CLIP --json` object), with and without the server's SAM 2 video segmenter; bad clips are 400s that
name the field, and the temporary file never outlives its request."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from groundscope.serve.app import create_app  # noqa: E402

H, W = 96, 160
BOX = [20, 20, 90, 70]


class NoDetector:
    """The describe routes never call the detector for box regions; a stand-in keeps the test off nano."""

    name, device = "none", "cpu"


@pytest.fixture(scope="module")
def describer(dam_dir):
    from groundscope.describe import load_describer

    return load_describer(dam_dir, device="cpu")


@pytest.fixture(scope="module")
def vs(tiny_sam2_video_dir):
    from groundscope.models.video_segmenter import load_video_segmenter

    return load_video_segmenter(tiny_sam2_video_dir)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from groundscope.track.mp4 import write_mp4

    rng = np.random.default_rng(3)
    frames = []
    for t in range(12):  # a bright square moving right over noise
        f = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)
        f[30:60, 10 + 6 * t:40 + 6 * t] = (230, 40, 40)
        frames.append(f)
    path = tmp_path_factory.mktemp("clip") / "moving.mp4"
    write_mp4(frames, path, fps=10)
    return path


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("groundscope-clip-*")}


def post(client, clip_bytes, data, name="moving.mp4"):
    return client.post("/v1/describe", files={"video": (name, clip_bytes, "video/mp4")}, data=data)


def test_clip_without_a_video_segmenter_keeps_the_region_on_every_sampled_frame(describer, clip):
    before = leftovers()
    gen = {"max_new_tokens": 6, "temperature": 0}
    want = describer.describe_video(clip, {"box": BOX, "name": "box 20,20,90,70"}, num_frames=4, **gen)
    with TestClient(create_app(NoDetector(), describer=describer)) as client:
        r = post(client, clip.read_bytes(), {"box": "20,20,90,70", "frames": "4", "max_new_tokens": "6",
                                              "temperature": "0"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert client.get("/healthz").json()["video_segmenter"] is None
    assert rec["image"] == "moving.mp4" and (rec["width"], rec["height"]) == (W, H) and rec["total_frames"] == 12
    (reg,) = rec["regions"]
    assert reg == want.to_dict() and rec["frames"] == want.frames == [0, 3, 7, 11]
    assert leftovers() <= before


def test_clip_with_a_video_segmenter_propagates_from_the_given_frame(describer, vs, clip):
    before = leftovers()
    gen = {"max_new_tokens": 6, "temperature": 0}
    want = describer.describe_video(clip, {"box": BOX, "name": "box 20,20,90,70"}, frame=2, segmenter=vs, **gen)
    assert want.ok and min(want.frames) >= 2
    with TestClient(create_app(NoDetector(), describer=describer, video_segmenter=vs)) as client:
        assert client.get("/healthz").json()["video_segmenter"] == vs.name
        r = post(client, clip.read_bytes(), {"box": "20,20,90,70", "frame": "2", "max_new_tokens": "6",
                                              "temperature": "0"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["regions"] == [want.to_dict()] and rec["frames"] == want.frames and rec["total_frames"] == 12
        # one region only: it is given on one frame and propagated
        r = post(client, clip.read_bytes(), {"box": ["20,20,90,70", "30,30,60,60"]})
        assert r.status_code == 400 and "one region" in r.json()["error"]
        r = post(client, clip.read_bytes(), {"box": "20,20,90,70", "frame": "40"})
        assert r.status_code == 400 and "frame 40 is past the end" in r.json()["error"]
    assert leftovers() <= before


def test_bad_clips_are_named_400s_and_the_server_keeps_serving(describer, synth_png_bytes, clip):
    before = leftovers()
    with TestClient(create_app(NoDetector(), describer=describer, max_video_frames=10)) as client:
        def error(data, files):
            r = client.post("/v1/describe", files=files, data=data)
            assert r.status_code == 400, r.text
            return r.json()["error"]

        video = clip.read_bytes()
        assert "more than 10 frames" in error({"box": "1,1,9,9"}, {"video": ("moving.mp4", video)})
        msg = error({"box": "1,1,9,9"}, {"video": ("broken.mp4", b"\x00not a video" * 50)})
        assert msg.startswith("form field 'video': video 'broken.mp4'") and "groundscope-clip" not in msg
        assert "empty" in error({"box": "1,1,9,9"}, {"video": ("e.mp4", b"")})
        both = {"video": ("moving.mp4", video), "image": ("s.png", synth_png_bytes)}
        assert "one of the two" in error({"box": "1,1,9,9"}, both)
        assert "no video segmenter" in error({"box": "1,1,9,9", "frame": "3"}, {"video": ("moving.mp4", video)})
        assert "for a 'video'" in error({"box": "1,1,9,9", "frames": "3"}, {"image": ("s.png", synth_png_bytes)})
        assert "send the expression" in error({"box": "1,1,9,9", "track": "true"}, {"video": ("moving.mp4", video)})
        # and a good request right after
        r = client.post("/v1/describe", files={"image": ("s.png", synth_png_bytes)},
                        data={"box": "20,20,90,70", "max_new_tokens": "4"})
        assert r.status_code == 200, r.text
    assert leftovers() <= before


@pytest.fixture(scope="module")
def synth_png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
