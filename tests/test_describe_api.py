"""`groundscope.describe.api` and `groundscope describe` on a tiny random DAM (SigLIP 24 px / patch 8 / width 32,
a 1-layer Llama on a word-level tokenizer) saved in the released layout: boxes, masks and points are described, a
bad region in a batch gets an error naming it while the others are described, the CLI writes JSON and an annotated
image, --expression describes the detector's own REC top-1 box, and videos (a folder of frames, an mp4) are
sampled uniformly with one focal prompt per frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope.cli import app
from groundscope.describe import (
    Describer,
    Region,
    load_describer,
    load_video,
    region_to_mask,
    sample_indices,
)
from groundscope.models.loading import ModelLoadError

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def describer(dam_dir) -> Describer:
    return load_describer(dam_dir, device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((160, 160)))


def test_box_mask_and_points_are_described(describer, photo, tmp_path):
    assert describer.name == str(describer.path) and describer.config.image_size == 24
    r = describer.describe(photo, box=(40, 30, 100, 90))
    assert r.ok and r.text.strip() and r.box == [40, 30, 100, 90] and r.area == 60 * 60
    # the same text as the model's own generate on the same mask (greedy: the saved config's temperature 0)
    mask = region_to_mask(photo.shape[:2], box=(40, 30, 100, 90))
    assert r.text == describer.model.generate([photo], [mask])[0]

    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = describer.describe(photo, [{"mask": tmp_path / "mask.png"}, Region(points=[(70, 60), (75, 65)]),
                                     {"box": (40, 30, 100, 90), "name": "the helmet"}])
    assert [o.ok for o in out] == [True, True, True] and all(o.text.strip() for o in out)
    assert out[0].text == r.text and out[0].box == [40, 30, 100, 90] and out[0].area == r.area  # tight box
    assert out[2].name == "the helmet" and out[2].to_dict()["box"] == [40, 30, 100, 90]
    assert set(out[1].to_dict()) == {"name", "box", "area", "text", "error"}


def test_bad_regions_get_errors_naming_them_and_the_rest_is_described(describer, photo, tmp_path):
    empty = np.zeros(photo.shape[:2], bool)
    out = describer.describe(photo, [{"mask": empty}, {"box": (40, 30, 100, 90)}, {"box": (500, 500, 600, 600)},
                                     {"mask": np.ones((5, 5), bool)}, {"box": (1, 2, 3, 4), "mask": empty}])
    assert out[1].ok and out[1].text.strip()
    assert out[0].error.startswith("region 0: the mask is empty") and out[0].text == "" and out[0].area == 0
    assert "region 2: box" in out[2].error and "outside the 160x160" in out[2].error
    assert "region 3: mask is 5x5" in out[3].error and "resize it" in out[3].error
    assert "region 4: give exactly one of mask, box or points" in out[4].error
    # a batch over images: an unreadable one fails its regions only
    res = describer.describe([photo, tmp_path / "missing.jpg"], [[{"box": (0, 0, 50, 50)}], [{"box": (0, 0, 5, 5)}]])
    assert res[0][0].ok and "image 1 region 0" in res[1][0].error and "no such file" in res[1][0].error


def test_cli_writes_json_and_an_annotated_image(dam_dir, tmp_path):
    image = tmp_path / "astronaut.png"
    Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((200, 150)).save(image)
    Image.fromarray(region_to_mask((150, 200), box=(20, 20, 60, 70)).astype(np.uint8) * 255).save(tmp_path / "m.png")
    ann = tmp_path / "out" / "described.png"
    res = runner.invoke(app, ["describe", str(image), "--model", str(dam_dir), "--box", "100,30,180,120",
                              "--mask", str(tmp_path / "m.png"), "--points", "50,60;55,65", "--json",
                              "--out", str(ann), "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["image"] == str(image) and (rec["width"], rec["height"]) == (200, 150)
    assert [r["box"] for r in rec["regions"][:2]] == [[100, 30, 180, 120], [20, 20, 60, 70]]
    for r in rec["regions"]:
        assert {"box", "area", "text", "error"} <= set(r) and r["error"] is None and r["text"]
    with Image.open(ann) as im:
        assert im.width == 200 and im.height > 150  # the image, and the texts below it

    # plain text: one line per region; a region outside the image: exit 1, the other still printed
    res = runner.invoke(app, ["describe", str(image), "-m", str(dam_dir), "--box", "10,10,50,50",
                              "--box", "300,300,400,400"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(str(image))]
    assert len(lines) == 1 and lines[0].split("\t")[1] == "10,10,50,50"
    assert "box 300,300,400,400: box" in res.output and "outside" in res.output


def test_cli_argument_and_model_errors_exit_2(dam_dir, tmp_path, monkeypatch):
    import groundscope.models.loading as loading

    image = str(EXAMPLES / "chelsea.jpg")
    res = runner.invoke(app, ["describe", image, "-m", str(dam_dir)])
    assert res.exit_code == 2 and "no region given" in res.output
    res = runner.invoke(app, ["describe", image, "-m", str(dam_dir), "--box", "1,2,3,4", "-e", "the cat"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(app, ["describe", image, "-m", str(dam_dir), "-e", "the cat", "--track"])
    assert res.exit_code == 2 and "--track" in res.output
    # the bundled dam-nano, not built in this install: the error says how to build it
    import groundscope.models.hub as hub

    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path)
    res = runner.invoke(app, ["describe", image, "--box", "1,2,30,40"])
    assert res.exit_code == 2 and "'dam-nano' is missing" in res.output and "bundle_dam_nano.py" in res.output
    with pytest.raises(ModelLoadError, match="is a describer.*load_describer"):
        loading.load_detector("dam-3b")
    with pytest.raises(ModelLoadError, match="is a detector"):
        load_describer("nano")
    with pytest.raises(ModelLoadError, match="not a DAM folder"):
        load_describer(tmp_path)


def test_expression_describes_the_detectors_top1_box(dam_dir, tiny_mm_dir, example_photo, tmp_path):
    from groundscope.models.loading import load_detector

    det = load_detector(tiny_mm_dir)
    top = det.refer(example_photo, "the cat", top_k=1)
    res = runner.invoke(app, ["describe", str(example_photo), "-m", str(dam_dir), "-e", "the cat",
                              "--detector", str(tiny_mm_dir), "--json", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout.strip().splitlines()[-1])["regions"]
    assert r["box"] == top.to_list()[0]["box"] and r["score"] == pytest.approx(float(top.scores[0]), abs=1e-5)
    assert r["expression"] == "the cat" and r["text"] and r["error"] is None
    assert (tmp_path / "chelsea.png").is_file()  # --out a folder: <stem>.png

    # the API gives the same box, and the description of exactly that box region
    describer = load_describer(dam_dir, device="cpu")
    api = describer.describe_expression(example_photo, "the cat", det)
    assert api.box == [float(v) for v in top.xyxy[0]]
    assert api.text == describer.describe(example_photo, box=api.box).text


def test_video_frames_folder(dam_dir, tiny_mm_dir, photo, tmp_path, monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        Image.fromarray(np.roll(photo, 10 * k, axis=1)).save(frames / f"{k:03d}.png")
    res = runner.invoke(app, ["describe", str(frames), "-m", str(dam_dir), "--box", "40,30,100,90", "--json",
                              "-o", str(tmp_path / "video.png")])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    # always 8 frames, official np.linspace(0, n - 1, 8, dtype=int): a 3-frame video repeats its frames
    official = [int(i) for i in np.linspace(0, 2, 8, dtype=int)]
    assert official == [0, 0, 0, 0, 1, 1, 1, 2]
    assert rec["frames"] == official and rec["total_frames"] == 3
    (r,) = rec["regions"]
    assert r["text"] and r["frame_boxes"] == [[40, 30, 100, 90]] * 8 and r["frames"] == official
    assert Image.open(tmp_path / "video.png").height > 0

    # the model gets one video: the eight sampled frames in time order, each with its own mask
    describer = load_describer(dam_dir, device="cpu")
    seen = {}
    real = describer.model.generate

    def spy(images, masks, **kw):
        seen.update(images=images, masks=masks)
        return real(images, masks, **kw)

    monkeypatch.setattr(describer.model, "generate", spy)
    boxes = [{"box": (10 + 20 * k, 30, 60 + 20 * k, 90)} for k in range(3)]
    out = describer.describe_video(frames, boxes)
    assert out.ok and out.frame_boxes == [[10 + 20 * k, 30, 60 + 20 * k, 90] for k in official]
    (clip,), (clip_masks,) = seen["images"], seen["masks"]
    assert len(clip) == 8 and all(np.array_equal(clip[j], np.asarray(Image.open(frames / f"{k:03d}.png")))
                                  for j, k in enumerate(official))
    assert [int(np.nonzero(m.any(0))[0][0]) for m in clip_masks] == [10 + 20 * k for k in official]
    assert describer.describe_video(frames, boxes[:2]).error.startswith("region: 2 per-frame regions")

    # --track: the detector's REC box of every frame
    from groundscope.models.loading import load_detector

    det = load_detector(tiny_mm_dir)
    tracked = describer.describe_video(frames, expression="the astronaut", detector=det, track=True)
    files = sorted(frames.iterdir())
    expected = [[float(v) for v in d.xyxy[0]] for d in det.refer([np.asarray(Image.open(files[k])) for k in
                                                                   official], "the astronaut")]
    assert tracked.ok and tracked.frame_boxes == expected and tracked.expression == "the astronaut"


def test_video_file_is_sampled_uniformly(tmp_path):
    av = pytest.importorskip("av")
    # official np.linspace(0, n - 1, 8, dtype=int) truncates (the old rounding gave 0, 3, 5, 8, 11, 14, 16, 19) and
    # repeats frames of a short video (the old sampling gave [0, 1, 2])
    assert sample_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2] and sample_indices(20, 8) == [0, 2, 5, 8, 10, 13, 16, 19]
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(20):
            frame = np.full((48, 64, 3), 12 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = load_video(path, 8)
    assert clip.total == 20 and clip.indices == [0, 2, 5, 8, 10, 13, 16, 19]
    assert len(clip.frames) == 8 and clip.frames[0].shape == (48, 64, 3)
    # frame k is grey 12k: the sampled frames are the right ones, in order (within codec error)
    assert [round(float(f.mean()) / 12) for f in clip.frames] == clip.indices
