"""The synthetic video world: shapes of the still world moving over a static background, with exact tracks.

`generate_video_world` writes ``n`` clips of ``frames`` frames each. A clip has a fixed size (default
480x360), one background (`groundscope.data.render.background`) and 2-6 objects drawn with the still world's
attribute sampling, shapes and textures (`groundscope.data.synth`, `groundscope.data.render`), from its 56 base
colour-shape classes only, so the bundled ``nano`` detector, trained on the still world's train split, knows
every class. Category ids are those of the still world's ``coco.json`` (base class index + 1).

Motion: each object moves in a straight line at 1.5-6 px per frame, its heading turning by a small random
angle (Gaussian, sigma `TURN_SIGMA`) every frame; its shape and texture do not rotate. About a third start
outside the frame heading in (they enter after a random delay); the others start inside and may leave.
An object whose whole extent has left the frame after being in it is gone for good (it never comes back),
so a track never has a gap caused by the frame edge, only by occlusion.

Occlusion: objects are drawn in a fixed order per clip (object ``k`` over objects ``< k``); a pixel belongs to
the topmost object whose shape covers it with alpha >= 0.5, as in the still world (`SynthImage.owner`).
An object's **visible mask** on a frame is the pixels it owns there, its **box** the tight box around that
mask (the visible extent, as the still world and the detector trained on it draw boxes), its visibility the
visible share of its whole shape (pixels hidden by occluders or cut off by the frame edge both count as not
visible, as MOT16's visibility ratio does). An object with no visible pixel on a frame (fully occluded, not
yet entered, or gone) has no annotation on that frame.

Deterministic: clip ``c`` of ``seed`` is drawn from ``SeedSequence([seed, VIDEO_STREAM, c])`` (its own stream,
so clips never reuse a still-world image's random numbers), and every text file is written with fixed order
and formatting, so the same arguments give byte-identical JSON, ground truth and PNGs.

Layout (MOTChallenge's, with a COCO-VID file beside it; ``file_name`` entries are relative to ``DIR``)::

    DIR/synth-0001/img1/000001.png ...   frames (PNG, lossless), 1-based like MOTChallenge's
    DIR/synth-0001/gt/gt.txt             MOTChallenge ground truth (`write_gt` documents the columns)
    DIR/synth-0001/seqinfo.ini           MOTChallenge sequence info (name, imDir, frameRate, seqLength, ...)
    DIR/synth-0001.mp4                   the clip as video, when PyAV is importable (`VIDEO_CODECS`)
    DIR/annotations.json                 COCO-VID (mmtracking's CocoVID keys) with RLE masks, all clips
    DIR/meta.json                        seed, settings, classes, what was written

Video: H.264 through PyAV. ``libx264rgb`` at ``crf 0`` stores the RGB frames losslessly (decoding gives the
PNGs' pixels exactly; the tests check it); ffmpeg, PyAV, VLC and mpv play it, browsers and QuickTime do not
(H.264 High 4:4:4 Predictive in RGB). A PyAV build without ``libx264rgb`` falls back to ``libx264`` at
``crf 0`` in ``yuv444p``: lossless in YUV, within 2 grey levels of the PNGs after the RGB/YUV round trip.
meta.json records which was used. The PNGs are the reference; the video is for viewing and video readers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from groundscope import masks as rle
from groundscope.data import render
from groundscope.data.jsonio import write_json

# The still world's attribute sampler (duplicated classes at another size, size bins, tilt): reused as it is,
# so the video's objects are the still world's objects. It is module-private there; this module is its one
# other caller.
from groundscope.data.synth import _sample_attributes
from groundscope.data.vocab import COLOUR_RGB, base_classes, split_definition

GENERATOR_VERSION = 1
VIDEO_STREAM = 2  # SeedSequence entropy tag: the still world uses 0 (train) and 1 (test)
DEFAULT_SIZE = (480, 360)  # (width, height); the still world's images are 320-640 px a side
MIN_SIDE, MAX_SIDE = 64, 4096
FPS = 10
OBJECTS = (2, 6)  # objects per clip, inclusive
SPEED = (1.5, 6.0)  # px per frame
TURN_SIGMA = math.radians(4.0)  # heading change per frame (Gaussian sigma)
ENTER_PROB = 0.3  # share of objects that start outside the frame and move in
ENTER_SPREAD = math.radians(35.0)  # an entering object's heading is within this of the inward normal
ENTER_DELAY = 0.5  # an entering object reaches the edge within this share of the clip (in frames)
NOISE_PROB = 0.4  # share of clips with sensor noise (render.finish), the still world's rate
CLIP_NAME = "synth-{:04d}"
# (codec, pixel format, options), tried in order (module doc: why these).
VIDEO_CODECS = (("libx264rgb", "rgb24", {"crf": "0", "preset": "medium"}),
                ("libx264", "yuv444p", {"crf": "0", "preset": "medium"}))


@dataclass
class MovingObject:
    """One object of a clip: its still-world attributes, pixels and motion state.

    Attributes:
        attrs: ``colour, shape, size, side, texture, angle`` as `groundscope.data.synth` samples them.
        alpha: float32 (h, w) anti-aliased shape mask, tight to the pixels with alpha >= 0.5.
        fill: float32 (h, w, 3) the object's colour and texture (fixed for the clip).
        pixels: number of pixels with alpha >= 0.5: the whole shape, the visibility denominator.
        cx, cy: centre in pixels (float; the drawn position is rounded).
        heading: direction of motion in radians (0 = +x, pi/2 = +y, image y points down).
        speed: px per frame.
        entered: the object's extent has overlapped the frame at least once.
        exit_frame: 0-based frame at which it was first entirely outside after having entered (None: never).
    """

    attrs: dict
    alpha: np.ndarray
    fill: np.ndarray
    pixels: int
    cx: float
    cy: float
    heading: float
    speed: float
    entered: bool = False
    exit_frame: int | None = None

    @property
    def name(self) -> str:
        return f"{self.attrs['colour']} {self.attrs['shape']}"

    def top_left(self) -> tuple[int, int]:
        """Integer (x, y) of the mask's top-left pixel; floor(v + 0.5) rounds the same way on every platform."""
        h, w = self.alpha.shape
        return math.floor(self.cx - w / 2 + 0.5), math.floor(self.cy - h / 2 + 0.5)


@dataclass
class SynthClip:
    """A clip before rendering: size, background float32 (H, W, 3), objects in drawing order, noise flag."""

    width: int
    height: int
    background: np.ndarray
    background_words: str
    objects: list[MovingObject]
    noisy: bool


@dataclass
class SynthFrame:
    """One rendered frame.

    Attributes:
        index: 0-based frame number.
        pixels: uint8 (H, W, 3).
        owner: int16 (H, W): index of the object that shows at each pixel, -1 for background.
        full_boxes: per object, its whole extent ``(x1, y1, x2, y2)`` (may reach beyond the frame), or None
            when the object is gone.
    """

    index: int
    pixels: np.ndarray
    owner: np.ndarray
    full_boxes: list[tuple[int, int, int, int] | None]


# ----------------------------------------------------------------------------------------------- sampling


def _start_inside(rng: np.random.Generator, width: int, height: int, h: int, w: int) -> tuple[float, float, float]:
    """Centre anywhere the whole shape fits (or anywhere, for a shape larger than the frame), random heading."""
    cx = float(rng.uniform(w / 2, width - w / 2)) if w < width else float(rng.uniform(0, width))
    cy = float(rng.uniform(h / 2, height - h / 2)) if h < height else float(rng.uniform(0, height))
    return cx, cy, float(rng.uniform(0, 2 * math.pi))


def _start_outside(rng: np.random.Generator, width: int, height: int, h: int, w: int, speed: float,
                   frames: int) -> tuple[float, float, float]:
    """Centre beyond a random edge, heading inward, far enough out to reach the edge after a random delay."""
    edge = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    normal = (0.0, math.pi, math.pi / 2, -math.pi / 2)[edge]  # the inward direction
    heading = normal + float(rng.uniform(-ENTER_SPREAD, ENTER_SPREAD))
    delay = float(rng.uniform(1.0, max(1.0, ENTER_DELAY * frames)))
    back = speed * delay  # distance travelled before the shape first touches the frame
    if edge < 2:
        cy = float(rng.uniform(0.15, 0.85) * height)
        cx = -w / 2 - back if edge == 0 else width + w / 2 + back
    else:
        cx = float(rng.uniform(0.15, 0.85) * width)
        cy = -h / 2 - back if edge == 2 else height + h / 2 + back
    # Start where the object would be `delay` frames before reaching the edge along its (tilted) heading.
    cx += back * math.cos(normal) - back * math.cos(heading)
    cy += back * math.sin(normal) - back * math.sin(heading)
    return cx, cy, heading


def sample_clip(rng: np.random.Generator, frames: int, width: int, height: int) -> SynthClip:
    """Draw a clip's background and objects (attributes, pixels, start position and motion)."""
    canvas, words = render.background(height, width, rng)
    objects: list[MovingObject] = []
    placed: list[dict] = []
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        attrs = _sample_attributes(rng, "train", placed)  # base combinations only: what nano was trained on
        placed.append(attrs)
        alpha = render.shape_mask(attrs["shape"], attrs["side"], attrs["angle"])
        h, w = alpha.shape
        fill = render.texture_fill(attrs["texture"], h, w, COLOUR_RGB[attrs["colour"]], rng)
        speed = float(rng.uniform(*SPEED))
        if rng.random() < ENTER_PROB:
            cx, cy, heading = _start_outside(rng, width, height, h, w, speed, frames)
        else:
            cx, cy, heading = _start_inside(rng, width, height, h, w)
        objects.append(MovingObject(attrs=attrs, alpha=alpha, fill=fill, pixels=int((alpha >= 0.5).sum()),
                                    cx=cx, cy=cy, heading=heading, speed=speed))
    noisy = bool(rng.random() < NOISE_PROB)
    return SynthClip(width=width, height=height, background=canvas, background_words=words, objects=objects,
                     noisy=noisy)


# ----------------------------------------------------------------------------------------------- rendering


def render_frames(clip: SynthClip, frames: int, rng: np.random.Generator) -> Iterator[SynthFrame]:
    """Render the clip frame by frame, moving the objects after each frame (mutates ``clip.objects``)."""
    H, W = clip.height, clip.width
    for t in range(frames):
        canvas = clip.background.copy()
        owner = np.full((H, W), -1, dtype=np.int16)
        full_boxes: list[tuple[int, int, int, int] | None] = []
        for k, obj in enumerate(clip.objects):
            h, w = obj.alpha.shape
            x, y = obj.top_left()
            inside = x < W and x + w > 0 and y < H and y + h > 0
            if obj.exit_frame is None and not inside and obj.entered:
                obj.exit_frame = t  # left the frame entirely: gone from now on
            if obj.exit_frame is not None:
                full_boxes.append(None)
                continue
            full_boxes.append((x, y, x + w, y + h))
            if not inside:
                continue
            obj.entered = True
            # The part of the shape inside the frame (render.composite needs arrays that fit the canvas).
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            a = obj.alpha[y0 - y : y1 - y, x0 - x : x1 - x]
            render.composite(canvas, obj.fill[y0 - y : y1 - y, x0 - x : x1 - x], a, x0, y0)
            owner[y0:y1, x0:x1][a >= 0.5] = k  # drawn later = on top: the owner map is the occlusion
        pixels = render.finish(canvas, rng, noise_prob=1.0 if clip.noisy else 0.0)
        yield SynthFrame(index=t, pixels=pixels, owner=owner, full_boxes=full_boxes)
        for obj in clip.objects:
            if obj.exit_frame is None:
                obj.heading += float(rng.normal(0.0, TURN_SIGMA))
                obj.cx += obj.speed * math.cos(obj.heading)
                obj.cy += obj.speed * math.sin(obj.heading)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel edges around the set pixels of a bool (H, W) mask (not empty)."""
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ----------------------------------------------------------------------------------------------- writing


def write_gt(path: Path, rows: list[tuple]) -> None:
    """Write MOTChallenge ground truth, one line per visible object per frame.

    Columns as in MOT16/MOT17 (Milan et al., "MOT16: A Benchmark for Multi-Object Tracking", arXiv:1603.00831,
    Table 3 "data format"; the devkit and TrackEval read the same): ``frame, id, bb_left, bb_top, bb_width,
    bb_height, conf, class, visibility``. ``frame`` is 1-based; ``bb_left/bb_top`` are 1-based pixel
    coordinates of the box's top-left pixel (the devkit's Matlab convention; motmetrics' loader subtracts 1);
    ``conf`` is the "consider" flag, 1 for every row here (0 would mean "ignore this box"); ``class`` is the
    still world's category id (not MOT's pedestrian = 1 table); ``visibility`` is the visible share in [0, 1].
    Rows are sorted by frame, then id.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{f},{i},{x + 1},{y + 1},{w},{h},1,{c},{v:.6f}\n" for f, i, x, y, w, h, c, v in sorted(rows)]
    path.write_text("".join(lines), encoding="ascii", newline="\n")


def write_seqinfo(path: Path, name: str, frames: int, width: int, height: int) -> None:
    """MOTChallenge's seqinfo.ini (the keys MOT17's files have; TrackEval reads ``seqLength`` from it)."""
    path.write_text(f"[Sequence]\nname={name}\nimDir=img1\nframeRate={FPS}\nseqLength={frames}\n"
                    f"imWidth={width}\nimHeight={height}\nimExt=.png\n", encoding="ascii", newline="\n")


class _VideoWriter:
    """An H.264 file written frame by frame through PyAV, with the first codec of `VIDEO_CODECS` it has."""

    def __init__(self, path: Path, width: int, height: int):
        import av

        self.av = av
        for codec, pix_fmt, options in VIDEO_CODECS:
            if codec in av.codecs_available:
                break
        else:
            raise RuntimeError(f"PyAV {av.__version__} has neither of {[c[0] for c in VIDEO_CODECS]}")
        self.codec, self.pix_fmt, self.options = codec, pix_fmt, options
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=FPS)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.options = dict(options)
        self.count = 0

    def write(self, pixels: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = self.count  # one tick of 1/FPS per frame
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()


def _video_available() -> str | None:
    """None when PyAV can write video, else why not (recorded in meta.json)."""
    try:
        import av
    except ImportError:
        return "PyAV is not installed (pip install av, or groundscope[video])"
    if not any(c[0] in av.codecs_available for c in VIDEO_CODECS):
        return f"PyAV {av.__version__} has neither of {[c[0] for c in VIDEO_CODECS]}"
    return None


def parse_size(text: str) -> tuple[int, int]:
    """``"480x360"`` -> (480, 360); a malformed or out-of-range size is a ValueError saying what is allowed."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT such as 480x360, not {text!r}") from None
    _check_size(width, height)
    return width, height


def _check_size(width: int, height: int) -> None:
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ValueError(f"frame size {width}x{height}: each side must be {MIN_SIDE}..{MAX_SIDE} px")


def generate_video_world(out: str | Path, n: int, frames: int, seed: int = 0,
                         size: tuple[int, int] = DEFAULT_SIZE, video: bool = True,
                         progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate ``n`` clips of ``frames`` frames into ``out`` (layout and rules in the module doc).

    Args:
        out: output directory (created; files with the same names are overwritten).
        n: number of clips (>= 1).
        frames: frames per clip (>= 1).
        seed: random seed; the same (seed, n, frames, size) gives byte-identical JSON, gt.txt and PNG files.
        size: (width, height) of every frame.
        video: also write ``<clip>.mp4`` when PyAV can (meta.json says whether and how it did).
        progress: called as ``progress(done, n)`` after each clip.

    Returns:
        ``{"out", "clips", "frames", "tracks", "annotations", "video", "seconds"}``.
    """
    if n < 1:
        raise ValueError(f"n (clips) must be >= 1, got {n}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    width, height = size
    _check_size(width, height)
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = base_classes()
    why_no_video = _video_available() if video else "not asked for (--no-video)"
    codec = None

    videos, images, annotations, tracks = [], [], [], []
    next_image, next_ann, next_instance = 1, 1, 1
    for c in range(n):
        name = CLIP_NAME.format(c + 1)
        video_id = c + 1
        rng = np.random.default_rng(np.random.SeedSequence([seed, VIDEO_STREAM, c]))
        clip = sample_clip(rng, frames, width, height)
        (out / name / "img1").mkdir(parents=True, exist_ok=True)
        writer = _VideoWriter(out / f"{name}.mp4", width, height) if why_no_video is None else None
        gt_rows: list[tuple] = []
        instance_of: dict[int, int] = {}  # object index -> COCO-VID instance_id, given on first appearance
        spans: dict[int, list[int]] = {}  # object index -> [first, last] 0-based frame with an annotation
        for frame in render_frames(clip, frames, rng):
            file_name = f"{name}/img1/{frame.index + 1:06d}.png"
            # compress_level=1 as the still world: ~4x faster than the default, files ~20 % larger.
            Image.fromarray(frame.pixels).save(out / file_name, format="PNG", compress_level=1)
            if writer is not None:
                writer.write(frame.pixels)
            images.append({"id": next_image, "video_id": video_id, "file_name": file_name, "height": height,
                           "width": width, "frame_id": frame.index, "mot_frame_id": frame.index + 1})
            present = np.unique(frame.owner)
            for k in (int(v) for v in present[present >= 0]):  # ascending: draw order
                obj = clip.objects[k]
                mask = frame.owner == k
                x1, y1, x2, y2 = tight_box(mask)
                area = int(mask.sum())
                visibility = round(area / obj.pixels, 6)
                if k not in instance_of:
                    instance_of[k] = next_instance
                    next_instance += 1
                    spans[k] = [frame.index, frame.index]
                spans[k][1] = frame.index
                fb = frame.full_boxes[k]
                annotations.append({
                    "id": next_ann, "image_id": next_image, "video_id": video_id,
                    "instance_id": instance_of[k], "mot_instance_id": k + 1,
                    "category_id": classes.index(obj.name) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area, "iscrowd": 0, "visibility": visibility,
                    "segmentation": rle.encode(mask)[0],
                    "full_bbox": [fb[0], fb[1], fb[2] - fb[0], fb[3] - fb[1]]})
                gt_rows.append((frame.index + 1, k + 1, x1, y1, x2 - x1, y2 - y1, classes.index(obj.name) + 1,
                                visibility))
                next_ann += 1
            next_image += 1
        if writer is not None:
            writer.close()
            codec = {"codec": writer.codec, "pix_fmt": writer.pix_fmt, "options": writer.options}
        write_gt(out / name / "gt" / "gt.txt", gt_rows)
        write_seqinfo(out / name / "seqinfo.ini", name, frames, width, height)
        videos.append({"id": video_id, "name": name, "width": width, "height": height, "frame_rate": FPS,
                       "length": frames, "background": clip.background_words})
        for k in sorted(instance_of, key=instance_of.get):
            obj = clip.objects[k]
            tracks.append({"id": instance_of[k], "video_id": video_id, "mot_instance_id": k + 1,
                           "category_id": classes.index(obj.name) + 1, "name": obj.name,
                           "attributes": {key: obj.attrs[key] for key in ("colour", "shape", "size", "texture",
                                                                          "side")},
                           "pixels": obj.pixels, "draw_order": k, "first_frame": spans[k][0],
                           "last_frame": spans[k][1], "exit_frame": obj.exit_frame})
        if progress is not None:
            progress(c + 1, n)

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    write_json(out / "annotations.json", {"videos": videos, "images": images, "annotations": annotations,
                                          "tracks": tracks, "categories": categories})
    names = [v["name"] for v in videos]
    video_meta = ({"written": True, **codec, "container": "mp4", "fps": FPS} if codec is not None
                  else {"written": False, "reason": why_no_video})
    meta = {
        "generator": "groundscope.data.synth_video", "version": GENERATOR_VERSION, "seed": seed, "clips": n,
        "frames": frames, "width": width, "height": height, "fps": FPS, "sequences": names,
        "settings": {"objects": list(OBJECTS), "speed_px_per_frame": list(SPEED),
                     "turn_sigma_deg": round(math.degrees(TURN_SIGMA), 6), "enter_prob": ENTER_PROB,
                     "noise_prob": NOISE_PROB, "classes": "still-world base classes (train split)"},
        "box": "visible extent, tight around the visible mask (COCO xywh, 0-based, in annotations.json; "
               "MOTChallenge 1-based bb_left/bb_top in gt.txt); the whole shape's extent in full_bbox",
        "frame_id": "annotations.json images: frame_id 0-based, mot_frame_id 1-based (gt.txt, img1/ names)",
        "video": video_meta, "categories": classes,
        "vocabulary": split_definition(include_held_out=False),
    }
    write_json(out / "meta.json", meta)
    return {"out": str(out), "clips": n, "frames": n * frames, "tracks": len(tracks),
            "annotations": len(annotations), "video": video_meta,
            "seconds": round(time.perf_counter() - start, 3)}
