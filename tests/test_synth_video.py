"""The synthetic video world: determinism, masks vs boxes vs pixels, entering / leaving, occlusion, the
MOTChallenge files (read by motmetrics' own loader), the lossless video, the CLI."""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope import masks
from groundscope.data import render
from groundscope.data.synth_video import (
    CLIP_NAME,
    MovingObject,
    SynthClip,
    generate_video_world,
    render_frames,
)
from groundscope.data.vocab import COLOUR_RGB, base_classes

W, H, CLIPS, FRAMES = 256, 192, 3, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video")
    generate_video_world(out, CLIPS, FRAMES, seed=0, size=(W, H))
    return out


def load(world: Path) -> dict:
    return json.loads((world / "annotations.json").read_text())


def by_track(ann: dict) -> dict[int, list[dict]]:
    """instance_id -> its annotations in frame order."""
    frame_of = {im["id"]: im["frame_id"] for im in ann["images"]}
    out: dict[int, list[dict]] = {}
    for a in sorted(ann["annotations"], key=lambda a: frame_of[a["image_id"]]):
        out.setdefault(a["instance_id"], []).append({**a, "frame_id": frame_of[a["image_id"]]})
    return out


def crosses_border(xywh) -> bool:
    x, y, w, h = xywh
    return x < 0 or y < 0 or x + w > W or y + h > H


def test_deterministic(world, tmp_path):
    generate_video_world(tmp_path, CLIPS, FRAMES, seed=0, size=(W, H))
    files = ["annotations.json", "meta.json"] + [f"{CLIP_NAME.format(c + 1)}/{p}" for c in range(CLIPS)
                                                 for p in ("gt/gt.txt", "seqinfo.ini", "img1/000001.png",
                                                           f"img1/{FRAMES:06d}.png")]
    for name in files:
        assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name
    other = tmp_path / "seed1"
    generate_video_world(other, CLIPS, FRAMES, seed=1, size=(W, H))
    assert (other / "annotations.json").read_bytes() != (world / "annotations.json").read_bytes()


def test_layout_and_categories(world):
    ann = load(world)
    meta = json.loads((world / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["frames"] == FRAMES and (meta["width"], meta["height"]) == (W, H)
    assert [v["name"] for v in ann["videos"]] == meta["sequences"] == [CLIP_NAME.format(c + 1) for c in range(CLIPS)]
    assert len(ann["images"]) == CLIPS * FRAMES
    for im in ann["images"]:
        assert im["mot_frame_id"] == im["frame_id"] + 1
        assert im["file_name"].endswith(f"img1/{im['mot_frame_id']:06d}.png") and (world / im["file_name"]).is_file()
    # The still world's base classes with its coco.json ids, so the nano detector knows every object.
    assert [c["name"] for c in ann["categories"]] == base_classes()
    names = {c["id"]: c["name"] for c in ann["categories"]}
    for t in ann["tracks"]:
        assert names[t["category_id"]] == t["name"] == f"{t['attributes']['colour']} {t['attributes']['shape']}"
    for v in ann["videos"]:
        ini = (world / v["name"] / "seqinfo.ini").read_text()
        assert f"seqLength={FRAMES}\n" in ini and f"imWidth={W}\n" in ini and "imDir=img1\n" in ini


def _hue_share(pixels: np.ndarray, rgb) -> np.ndarray:
    """Per pixel: hue within 15 degrees of ``rgb``'s and clearly saturated (the objects' colour, not the
    low-saturation background)."""
    target = colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0]
    p = pixels.astype(np.float32) / 255
    mx, mn = p.max(-1), p.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    hue = np.asarray(Image.fromarray(pixels).convert("HSV"), dtype=np.float32)[..., 0] / 255
    dh = np.minimum(np.abs(hue - target), 1 - np.abs(hue - target))
    return (dh < 15 / 360) & (sat > 0.2)


def test_masks_boxes_and_pixels_agree(world):
    ann = load(world)
    images = {im["id"]: im for im in ann["images"]}
    colour = {t["id"]: t["attributes"]["colour"] for t in ann["tracks"]}
    per_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in per_image.items():
        decoded = masks.decode([a["segmentation"] for a in anns])
        assert decoded.shape[1:] == (H, W)
        assert decoded.sum(0).max() <= 1, "visible masks of one frame overlap"
        pixels = np.asarray(Image.open(world / images[image_id]["file_name"]).convert("RGB"))
        for a, m in zip(anns, decoded, strict=True):
            ys, xs = np.nonzero(m)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["area"] == int(m.sum()) > 0
            # The mask covers the object's pixels in the PNG: (almost) all of it has the object's colour.
            assert _hue_share(pixels, COLOUR_RGB[colour[a["instance_id"]]])[m].mean() > 0.9


def test_objects_enter_and_leave(world):
    ann = load(world)
    tracks = {t["id"]: t for t in ann["tracks"]}
    anns = by_track(ann)
    left = [t for t in tracks.values() if t["exit_frame"] is not None]
    assert left, "the fixture world should have an object that leaves the frame"
    for t in left:
        frames = [a["frame_id"] for a in anns[t["id"]]]
        assert max(frames) < t["exit_frame"] and t["last_frame"] == max(frames)
        assert crosses_border(anns[t["id"]][-1]["full_bbox"]), "it left through the frame edge"
    entered = [t for t in tracks.values() if t["first_frame"] > 0 and crosses_border(anns[t["id"]][0]["full_bbox"])]
    assert entered, "the fixture world should have an object that enters the frame"
    for t in tracks.values():
        assert len({a["frame_id"] for a in anns[t["id"]]}) == len(anns[t["id"]])  # one box per frame


def test_cut_off_by_the_edge_lowers_visibility(world):
    ann = load(world)
    pixels = {t["id"]: t["pixels"] for t in ann["tracks"]}  # the whole shape's pixel count
    for t, anns in by_track(ann).items():
        for a in anns:
            assert a["visibility"] == round(a["area"] / pixels[t], 6)
            if crosses_border(a["full_bbox"]):
                x, y, w, h = a["full_bbox"]
                inside = (min(x + w, W) - max(x, 0)) * (min(y + h, H) - max(y, 0))
                assert a["visibility"] < 1 and a["area"] <= inside


def _object(shape: str, side: int, cx: float, cy: float, heading: float, speed: float) -> MovingObject:
    alpha = render.shape_mask(shape, side, 0.0)
    h, w = alpha.shape
    fill = np.full((h, w, 3), 200.0, np.float32)
    return MovingObject(attrs={"colour": "red", "shape": shape}, alpha=alpha, fill=fill,
                        pixels=int((alpha >= 0.5).sum()), cx=cx, cy=cy, heading=heading, speed=speed)


def test_occlusion_reduces_visible_area():
    """A square drawn over a circle hides part of it; moving apart gives the circle back its pixels."""
    rng = np.random.default_rng(0)
    bg = np.full((120, 200, 3), 120.0, np.float32)
    circle = _object("circle", 60, 60.0, 60.0, 0.0, 0.0)
    square = _object("square", 40, 60.0, 60.0, 0.0, 30.0)  # starts on the circle, moves 30 px right a frame
    clip = SynthClip(width=200, height=120, background=bg, background_words="", objects=[circle, square],
                     noisy=False)
    f0, f1, f2 = list(render_frames(clip, 3, rng))
    area = [[int((f.owner == k).sum()) for k in (0, 1)] for f in (f0, f1, f2)]
    assert area[0][1] == square.pixels  # drawn last: fully visible
    assert area[0][0] == circle.pixels - square.pixels  # the square sits inside the circle
    assert area[0][0] < area[1][0] < area[2][0] == circle.pixels  # partly, then not occluded at all


def test_world_has_occlusion(world):
    ann = load(world)
    occluded = [a for a in ann["annotations"] if a["visibility"] < 1 and not crosses_border(a["full_bbox"])]
    assert occluded, "the fixture world should have an object hidden in part by another"
    images = {im["id"]: im for im in ann["images"]}
    order = {t["id"]: t["draw_order"] for t in ann["tracks"]}
    for a in occluded:
        # Its hidden pixels lie under an object drawn later in the same frame.
        later = [b for b in ann["annotations"] if b["image_id"] == a["image_id"]
                 and order[b["instance_id"]] > order[a["instance_id"]]]
        x, y, w, h = a["full_bbox"]
        assert later and any(bx < x + w and x < bx + bw and by < y + h and y < by + bh
                             for bx, by, bw, bh in (b["bbox"] for b in later)), images[a["image_id"]]


def test_gt_txt_reads_with_motmetrics_loader(world, monkeypatch):
    mm = pytest.importorskip("motmetrics")
    ann = load(world)
    images = {im["id"]: im for im in ann["images"]}
    for v in ann["videos"]:
        df = mm.io.loadtxt(str(world / v["name"] / "gt" / "gt.txt"), fmt="mot15-2D", min_confidence=1)
        rows = {(int(f), int(i)): tuple(r) for (f, i), r in
                df[["X", "Y", "Width", "Height", "ClassId", "Visibility"]].iterrows()}
        expect = {(images[a["image_id"]]["mot_frame_id"], a["mot_instance_id"]):
                  (*map(float, a["bbox"]), float(a["category_id"]), a["visibility"])
                  for a in ann["annotations"] if a["video_id"] == v["id"]}
        # The loader shifts MOT's 1-based bb_left/bb_top to 0-based: the COCO boxes come back.
        assert rows.keys() == expect.keys()
        for key, value in expect.items():
            assert np.allclose(rows[key], value, atol=1e-6), key


def test_video_decodes_to_the_frames(world):
    av = pytest.importorskip("av")
    meta = json.loads((world / "meta.json").read_text())
    assert meta["video"]["written"]
    name = CLIP_NAME.format(2)
    with av.open(str(world / f"{name}.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES
    tolerance = 0 if meta["video"]["codec"] == "libx264rgb" else 2  # module doc: lossless RGB, else YUV 4:4:4
    for t in (0, FRAMES // 2, FRAMES - 1):
        png = np.asarray(Image.open(world / name / "img1" / f"{t + 1:06d}.png").convert("RGB"))
        assert np.abs(decoded[t].astype(int) - png).max() <= tolerance


def test_cli(tmp_path):
    from groundscope.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth-video", "--out", str(tmp_path / "v"), "--n", "1", "--frames", "3",
                                 "--seed", "5", "--size", "128x96", "--no-video"])
    assert result.exit_code == 0, result.output
    assert "1 clips, 3 frames" in result.output and "no mp4" in result.output
    assert (tmp_path / "v" / "synth-0001" / "img1" / "000003.png").is_file()
    assert not (tmp_path / "v" / "synth-0001.mp4").exists()
    digest = hashlib.sha256((tmp_path / "v" / "annotations.json").read_bytes()).hexdigest()
    generate_video_world(tmp_path / "w", 1, 3, seed=5, size=(128, 96), video=False)
    assert hashlib.sha256((tmp_path / "w" / "annotations.json").read_bytes()).hexdigest() == digest
    bad = runner.invoke(app, ["synth-video", "--out", str(tmp_path / "b"), "--size", "128by96"])
    assert bad.exit_code == 2 and "--size" in bad.output and "WIDTHxHEIGHT" in bad.output
    tiny = runner.invoke(app, ["synth-video", "--out", str(tmp_path / "b"), "--size", "16x16"])
    assert tiny.exit_code == 2 and "64..4096" in tiny.output
