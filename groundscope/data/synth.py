"""The synthetic grounding world: `generate_world` writes images and every annotation format for them.

Images are 320-640 px on each side with 1-8 objects. Each object has a colour, shape, size and texture
(`groundscope.data.vocab`), a small random rotation, and is drawn over a low-saturation background with
optional clutter and sensor noise. Objects may overlap, but every object keeps at least `MIN_VISIBLE` of its
pixels and a visible box of at least `MIN_BOX_SIDE` px (and 60 % of its full extent) on each side.

**Boxes are the visible extent** of each object (tight around its uncovered pixels with alpha >= 0.5), as
COCO annotators draw them; the full extent is kept in ``attributes.full_bbox``.

Deterministic: image ``i`` of ``(seed, split)`` is drawn from its own ``SeedSequence([seed, split, i])``,
and every file is written with fixed key order, so the same arguments give byte-identical files.

Directory layout (``file_name`` / ``filename`` entries are relative to ``DIR``)::

    DIR/images/000000.png ...        the images (PNG)
    DIR/meta.json                     split, seed, vocabulary, file list (test: also novel classes and synonyms)
    --split train (base combinations only):
    DIR/coco.json                     COCO, 56 base categories (ids 1..56), extras: phrase, description,
                                      tokens_positive, attributes; image caption + grounding_caption
    DIR/odvg_det.jsonl                ODVG detection records, labels 0..55
    DIR/label_map.json                {"0": "red circle", ...}  (label = COCO id - 1)
    DIR/paraphrases.json              {"red": ["scarlet", ...], ...}: training-only colour paraphrases
                                      (`groundscope.data.vocab.TRAIN_PARAPHRASES`, for data.paraphrases)
    DIR/odvg_grounding.jsonl          ODVG grounding records (caption listing every object, phrase spans)
    DIR/groundingcap.jsonl            GroundingCap records (grounding + detailed caption in conversations)
    DIR/refexp.json                   MDETR-style referring expressions, one target each
    --split test (novel combinations appear too, ~30 % of objects):
    DIR/coco_all.json                 all 64 categories (base ids 1..56 as in train, novel ids 57..64)
    DIR/coco_base.json                56 base categories, base objects only
    DIR/coco_novel.json               8 novel categories (ids 57..64), novel objects only
    DIR/coco_synonyms.json            the 56 base categories renamed with test-only colour synonyms
                                      ("crimson circle", same ids as coco_base.json), base objects only;
                                      canonical-colour extras (phrase, description, captions) are left out
    DIR/odvg_grounding.jsonl, DIR/groundingcap.jsonl, DIR/refexp.json   as for train, over all objects
    --small (either split): the large-image world for sliced inference (`SMALL_LAYOUT`): 2048 x 2048 canvases
    (``--size WIDTHxHEIGHT`` for others) holding 24-48 objects, 60 % of them "small" at 16-26 px (under COCO's
    32^2 small area), with every file above; meta.json records the layout.
    --regions (either split; or later with `groundscope synth-regions DIR`, which redraws the images):
    DIR/regions.json                  every object's exact visible mask (COCO RLE) + its description
                                      (`groundscope.data.regions`): Describe Anything's training data

Every COCO file of the test split lists every test image, so objects of the other group are simply not
annotated there (standard base/novel OVD evaluation). The open-vocabulary split itself is documented in
`groundscope.data.vocab`: novel combinations never occur in a train image or train text, and the test-only
synonyms occur in no file except ``coco_synonyms.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from groundscope.data import captions, expressions, render
from groundscope.data.coco import write_coco
from groundscope.data.groundingcap import write_groundingcap
from groundscope.data.jsonio import write_json
from groundscope.data.odvg import write_odvg_detection, write_odvg_grounding
from groundscope.data.records import Dataset, ImageRecord, Instance, RefExp, RefExpSet
from groundscope.data.regions import REGIONS_FILE, synth_region_annotations, write_regions
from groundscope.data.refexp import write_refexp
from groundscope.data.scene import SceneObject
from groundscope.data.vocab import (
    COLOUR_RGB,
    SIZE_NAMES,
    SIZES,
    TEXTURES,
    TRAIN_PARAPHRASES,
    base_classes,
    base_combos,
    novel_classes,
    novel_combos,
    split_definition,
    synonym_class_name,
)

SPLITS = ("train", "test")
IMAGE_SIDE = (320, 640)
MAX_OBJECTS = 8
MIN_VISIBLE = 0.75
MIN_BOX_SIDE = 24
MIN_BOX_FRACTION = 0.6
PLACEMENT_TRIES = 40
DUPLICATE_PROB = 0.35  # repeat an earlier object's class, so expressions need size/position to pick one
NOVEL_FRACTION = 0.3  # test split: share of objects drawn from the novel combinations
REFEXPS_PER_IMAGE = 3
MAX_TILT = math.radians(12)
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Layout:
    """How a world's images are laid out: canvas size, object count, object sizes, the smallest box.

    Attributes:
        size: fixed canvas (width, height), or None for `side` drawn per image.
        side: (lo, hi) px of each canvas side, drawn per image when `size` is None.
        objects: (lo, hi) objects drawn per image (fewer when placement under the occlusion limits fails).
        sizes: size word -> (lo, hi) px of the object's square footprint; the words are the vocabulary's.
        size_weights: probability of each size word (None: uniform, the default world's rule).
        min_box_side: smallest visible box side kept, px.
    """

    size: tuple[int, int] | None = None
    side: tuple[int, int] = IMAGE_SIDE
    objects: tuple[int, int] = (1, MAX_OBJECTS)
    sizes: tuple[tuple[str, tuple[int, int]], ...] = tuple(SIZES.items())
    size_weights: tuple[float, ...] | None = None
    min_box_side: int = MIN_BOX_SIDE

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 64):
            raise ValueError(f"the canvas size must be (width, height) with both sides >= 64 px, not {self.size}")
        if tuple(name for name, _ in self.sizes) != SIZE_NAMES:
            raise ValueError(f"sizes must give the size words {SIZE_NAMES} in order")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi, not {self.objects}")

    def side_range(self, word: str) -> tuple[int, int]:
        return dict(self.sizes)[word]

    def record(self) -> dict:
        """What meta.json records for a non-default layout (so `write_world_regions` can redraw the world)."""
        return {"size": list(self.size) if self.size else None, "side": list(self.side),
                "objects": list(self.objects), "sizes": {k: list(v) for k, v in self.sizes},
                "size_weights": list(self.size_weights) if self.size_weights else None,
                "min_box_side": self.min_box_side}

    @classmethod
    def from_record(cls, d: dict) -> "Layout":
        return cls(size=tuple(d["size"]) if d.get("size") else None, side=tuple(d["side"]),
                   objects=tuple(d["objects"]), sizes=tuple((k, tuple(v)) for k, v in d["sizes"].items()),
                   size_weights=tuple(d["size_weights"]) if d.get("size_weights") else None,
                   min_box_side=int(d["min_box_side"]))


DEFAULT_LAYOUT = Layout()
# The large-image world for sliced inference (`groundscope synth --small`, docs/sliced.md): 2048 x 2048 canvases
# with 24-48 objects, most of them "small" at 16-26 px (boxes under COCO's 32^2 small-object area), some
# "medium" (40-80 px) and a few "large" (160-300 px: more than a 320 px tile holds whole, so the whole-image pass
# and the merge of border-cut boxes matter). The size words keep their order, so "the small red circle" still
# reads off the image.
SMALL_LAYOUT = Layout(size=(2048, 2048), objects=(24, 48),
                      sizes=(("small", (16, 26)), ("medium", (40, 80)), ("large", (160, 300))),
                      size_weights=(0.6, 0.28, 0.12), min_box_side=8)


def parse_canvas(text: str) -> tuple[int, int]:
    """``"2048x1536"`` -> (2048, 1536): a canvas WIDTHxHEIGHT, each side 64..16384 px (a ValueError otherwise)."""
    parts = str(text).lower().split("x")
    try:
        width, height = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"the canvas size must be WIDTHxHEIGHT in pixels such as 2048x2048, not {text!r}") from None
    if not (64 <= width <= 16384 and 64 <= height <= 16384):
        raise ValueError(f"canvas {width}x{height}: each side must be 64..16384 px")
    return width, height


def small_layout(size: tuple[int, int] | None = None) -> Layout:
    """`SMALL_LAYOUT` on a (width, height) canvas (default 2048 x 2048); the object count scales with the area."""
    if size is None or tuple(size) == SMALL_LAYOUT.size:
        return SMALL_LAYOUT
    scale = size[0] * size[1] / (SMALL_LAYOUT.size[0] * SMALL_LAYOUT.size[1])
    lo, hi = (max(1, round(v * scale)) for v in SMALL_LAYOUT.objects)
    return Layout(size=tuple(int(v) for v in size), objects=(lo, max(lo, hi)), sizes=SMALL_LAYOUT.sizes,
                  size_weights=SMALL_LAYOUT.size_weights, min_box_side=SMALL_LAYOUT.min_box_side)


@dataclass
class SynthImage:
    """One generated image: pixels uint8 (H, W, 3), its objects in drawing order, background words.

    ``owner`` (H, W) int16 is the index of the object that shows at each pixel (-1: background): a pixel
    belongs to the topmost object whose shape covers it (anti-aliased alpha >= 0.5). ``owner == k`` is object
    k's exact visible mask, the mask its box is tight around (`object_mask`).
    """

    pixels: np.ndarray
    objects: list[SceneObject]
    background: str
    owner: np.ndarray | None = None

    def object_mask(self, k: int) -> np.ndarray:
        """(H, W) bool: the visible pixels of object ``k``."""
        if self.owner is None:
            raise ValueError("this SynthImage has no owner map")
        return self.owner == k


# ----------------------------------------------------------------------------------------------- layout


def _visible_box(owner: np.ndarray, k: int, x: int, y: int, h: int, w: int) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(owner[y : y + h, x : x + w] == k)
    if len(ys) == 0:
        return None
    return x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1


def _box_ok(box, h: int, w: int, min_side: int = MIN_BOX_SIDE) -> bool:
    if box is None:
        return False
    bw, bh = box[2] - box[0], box[3] - box[1]
    return bw >= max(min_side, MIN_BOX_FRACTION * w) and bh >= max(min_side, MIN_BOX_FRACTION * h)


def _sample_attributes(rng: np.random.Generator, split: str, previous: list[dict],
                       layout: Layout = DEFAULT_LAYOUT) -> dict:
    if previous and rng.random() < DUPLICATE_PROB:
        src = previous[int(rng.integers(len(previous)))]
        colour, shape = src["colour"], src["shape"]
        # A different size from the original, so the two are told apart by a word, not just a position.
        size = str(rng.choice([s for s in SIZE_NAMES if s != src["size"]]))
    else:
        if split == "test" and rng.random() < NOVEL_FRACTION:
            pool = novel_combos()
        else:
            pool = base_combos()
        colour, shape = pool[int(rng.integers(len(pool)))]
        if layout.size_weights is None:
            size = str(rng.choice(SIZE_NAMES))
        else:
            size = str(rng.choice(SIZE_NAMES, p=np.asarray(layout.size_weights) / sum(layout.size_weights)))
    lo, hi = layout.side_range(size)
    angle = float(rng.uniform(0, 2 * math.pi)) if shape == "crescent" else float(rng.uniform(-MAX_TILT, MAX_TILT))
    return {"colour": colour, "shape": shape, "size": size, "side": int(rng.integers(lo, hi + 1)),
            "texture": str(rng.choice(TEXTURES)), "angle": angle}


def sample_image(rng: np.random.Generator, split: str, layout: Layout = DEFAULT_LAYOUT) -> SynthImage:
    """Draw one image: size, background, objects placed under the occlusion limits, then pixels."""
    if layout.size is None:
        width = int(rng.integers(layout.side[0], layout.side[1] + 1))
        height = int(rng.integers(layout.side[0], layout.side[1] + 1))
    else:
        width, height = layout.size
    min_side = layout.min_box_side
    canvas, bg_words = render.background(height, width, rng)
    owner = np.full((height, width), -1, dtype=np.int16)  # index of the top object at each pixel
    placed: list[dict] = []
    for _ in range(int(rng.integers(layout.objects[0], layout.objects[1] + 1))):
        attrs = _sample_attributes(rng, split, placed, layout)
        alpha = render.shape_mask(attrs["shape"], attrs["side"], attrs["angle"])
        solid = alpha >= 0.5
        h, w = alpha.shape
        if min(h, w) < min_side:  # cannot happen with the layouts' sizes; guards edits to them
            continue
        k = len(placed)
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            region = owner[y : y + h, x : x + w]
            under = region[solid]
            hit = np.bincount(under[under >= 0], minlength=k) if k else np.zeros(0, dtype=np.int64)
            before = region.copy()
            region[solid] = k
            ok = True
            for j in np.nonzero(hit)[0]:
                pj = placed[j]
                if pj["visible"] - hit[j] < MIN_VISIBLE * pj["pixels"] or not _box_ok(
                        _visible_box(owner, j, pj["x"], pj["y"], pj["h"], pj["w"]), pj["h"], pj["w"], min_side):
                    ok = False
                    break
            if not ok:
                region[...] = before
                continue
            for j in np.nonzero(hit)[0]:
                placed[j]["visible"] -= int(hit[j])
                # Mention an occluder only when it hides a noticeable part (3 %), not a stray edge pixel.
                if hit[j] >= 0.03 * placed[j]["pixels"]:
                    placed[j]["hidden_by"].append(k)
            pixels = int(solid.sum())
            placed.append({**attrs, "alpha": alpha, "x": x, "y": y, "h": h, "w": w, "pixels": pixels,
                           "visible": pixels, "hidden_by": []})
            break
    objects = []
    for k, p in enumerate(placed):
        fill = render.texture_fill(p["texture"], p["h"], p["w"], COLOUR_RGB[p["colour"]], rng)
        render.composite(canvas, fill, p["alpha"], p["x"], p["y"])
        box = _visible_box(owner, k, p["x"], p["y"], p["h"], p["w"])
        assert box is not None and _box_ok(box, p["h"], p["w"], min_side)
        objects.append(SceneObject(
            colour=p["colour"], shape=p["shape"], size=p["size"], texture=p["texture"], side=p["side"],
            box=tuple(float(v) for v in box),
            full_box=(float(p["x"]), float(p["y"]), float(p["x"] + p["w"]), float(p["y"] + p["h"])),
            visible=p["visible"] / p["pixels"], hidden_by=list(p["hidden_by"])))
    return SynthImage(pixels=render.finish(canvas, rng), objects=objects, background=bg_words, owner=owner)


# ----------------------------------------------------------------------------------------------- annotations


def annotate(image: SynthImage, filename: str, image_id: int, first_ann_id: int, classes: list[str]
             ) -> ImageRecord:
    """The `ImageRecord` of a generated image: one instance per object with phrase, spans, description."""
    h, w = image.pixels.shape[:2]
    objs = image.objects
    caption, spans = captions.grounding_caption(objs)
    instances = []
    novel = set(novel_classes())
    for k, o in enumerate(objs):
        attributes = {"colour": o.colour, "shape": o.shape, "size": o.size, "texture": o.texture,
                      "side": o.side, "visible": round(o.visible, 3), "full_bbox": [int(v) for v in o.full_box],
                      "novel": o.name in novel}
        instances.append(Instance(
            bbox=o.box, label=classes.index(o.name), category=o.name, phrase=captions.short_phrase(o),
            tokens_positive=spans[k], description=captions.describe(k, objs, w, h), attributes=attributes,
            id=first_ann_id + k))
    return ImageRecord(filename=filename, height=h, width=w, instances=instances, image_id=image_id,
                       caption=caption, long_caption=captions.image_caption(objs, w, h, image.background))


def referring_expressions(image: SynthImage, record: ImageRecord, rng: np.random.Generator) -> list[RefExp]:
    """Up to `REFEXPS_PER_IMAGE` unambiguous expressions, each about a different object."""
    n = len(image.objects)
    targets = rng.permutation(n)[: min(REFEXPS_PER_IMAGE, n)]
    out = []
    for t in sorted(int(t) for t in targets):
        expr = expressions.generate(t, image.objects, rng)
        if expr is None:
            continue
        text, span = expr.render()
        inst = record.instances[t]
        out.append(RefExp(expression=text, bbox=inst.bbox, filename=record.filename, height=record.height,
                          width=record.width, image_id=record.image_id or 0, tokens_positive=[span],
                          category=inst.category, ann_id=inst.id))
    return out


def _subset(records: list[ImageRecord], keep: Callable[[Instance], bool], categories: list[str],
            names: list[str] | None = None, extras: bool = True) -> Dataset:
    """Copies of ``records`` keeping only instances that pass ``keep``, relabelled into ``categories``.

    ``names`` renames the categories in the output (same order); ``extras=False`` drops text fields.
    """
    index = {name: k for k, name in enumerate(categories)}
    images = []
    for r in records:
        insts = [Instance(bbox=i.bbox, label=index[i.category], category=i.category,
                          phrase=i.phrase if extras else None,
                          tokens_positive=list(i.tokens_positive) if extras else [],
                          description=i.description if extras else None, attributes=i.attributes, id=i.id)
                 for i in r.instances if keep(i)]
        images.append(ImageRecord(filename=r.filename, height=r.height, width=r.width, instances=insts,
                                  image_id=r.image_id, caption=r.caption if extras else None,
                                  long_caption=r.long_caption if extras else None))
    return Dataset(images=images, categories=list(names or categories))


# ----------------------------------------------------------------------------------------------- the world


def write_paraphrases(path: str | Path) -> Path:
    """Write the training-only colour paraphrase table (`groundscope.data.paraphrase` reads it)."""
    write_json(path, {colour: list(words) for colour, words in TRAIN_PARAPHRASES.items()})
    return Path(path)


def generate_world(out: str | Path, n: int, seed: int = 0, split: str = "train",
                   progress: Callable[[int, int], None] | None = None, regions: bool = False,
                   layout: Layout | None = None) -> dict:
    """Generate ``n`` images of ``split`` with every annotation file into ``out`` (layout in the module doc).

    Args:
        out: output directory (created; existing files with the same names are overwritten).
        n: number of images.
        seed: random seed; the same (seed, split, n) gives byte-identical files.
        split: ``"train"`` (base combinations only) or ``"test"`` (base + novel).
        progress: called as ``progress(done, n)`` after each image.
        regions: also write ``regions.json``: every object's exact visible mask (COCO RLE) with its
            description (`groundscope.data.regions`), DAM's training data. Off by default, so the other
            files and meta.json are byte-identical to a world generated without it.
        layout: canvas and object sizes (`Layout`); None is the default world (`DEFAULT_LAYOUT`: 320-640 px,
            1-8 objects), `small_layout()` the large-image world of many small shapes (``groundscope synth
            --small``). A non-default layout is recorded in meta.json under ``layout``; the default adds nothing,
            so the default world's files are byte-identical to those of earlier versions.

    Returns:
        ``{"out", "split", "seed", "images", "objects", "novel_objects", "refexps", "files", "seconds",
        "images_per_second"}``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    start = time.perf_counter()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    classes = base_classes() if split == "train" else base_classes() + novel_classes()
    records: list[ImageRecord] = []
    refs: list[RefExp] = []
    region_images: list[dict] = []
    region_anns: list[dict] = []
    next_ann = 1
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), i]))
        image = sample_image(rng, split, layout or DEFAULT_LAYOUT)
        filename = f"images/{i:06d}.png"
        # compress_level=1: ~4x faster than the default with files ~20 % larger; the data is noisy anyway.
        Image.fromarray(image.pixels).save(out / filename, format="PNG", compress_level=1)
        record = annotate(image, filename, i + 1, next_ann, classes)
        next_ann += len(record.instances)
        records.append(record)
        if regions:
            entry, anns = synth_region_annotations(image, record, i + 1, classes)
            region_images.append(entry)
            region_anns += anns
        refs.extend(referring_expressions(image, record, rng))
        if progress is not None:
            progress(i + 1, n)
    for k, ref in enumerate(refs):
        ref.id = k + 1

    files = _write_split(out, split, records, refs, classes)
    if regions:
        write_regions(out / REGIONS_FILE, region_images, region_anns, _categories(classes))
        files.append(REGIONS_FILE)
    meta = {"generator": "groundscope.data.synth", "version": GENERATOR_VERSION, "split": split, "seed": seed,
            "images": n, "box": "visible extent (xyxy in ODVG, xywh in COCO); full extent in attributes.full_bbox",
            "files": sorted(files), "vocabulary": split_definition(include_held_out=split == "test")}
    if layout is not None and layout != DEFAULT_LAYOUT:
        meta["layout"] = layout.record()
    write_json(out / "meta.json", meta)
    seconds = time.perf_counter() - start
    return {
        "out": str(out), "split": split, "seed": seed, "images": n,
        "objects": sum(len(r.instances) for r in records),
        "novel_objects": sum(bool(i.attributes["novel"]) for r in records for i in r.instances),
        "refexps": len(refs), "files": sorted(files + ["meta.json", "images/"]),
        "seconds": round(seconds, 3), "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }


def _write_split(out: Path, split: str, records: list[ImageRecord], refs: list[RefExp],
                 classes: list[str]) -> list[str]:
    full = Dataset(images=records, categories=classes)
    write_odvg_grounding(out / "odvg_grounding.jsonl", full)
    write_groundingcap(out / "groundingcap.jsonl", full)
    write_refexp(out / "refexp.json", RefExpSet(refs=refs, categories=classes), dataset_name=f"synth-{split}")
    files = ["odvg_grounding.jsonl", "groundingcap.jsonl", "refexp.json"]
    if split == "train":
        write_coco(out / "coco.json", full)
        write_odvg_detection(out / "odvg_det.jsonl", full, out / "label_map.json")
        write_paraphrases(out / "paraphrases.json")
        return files + ["coco.json", "odvg_det.jsonl", "label_map.json", "paraphrases.json"]
    base, novel = base_classes(), novel_classes()
    is_novel = lambda inst: bool(inst.attributes["novel"])  # noqa: E731
    write_coco(out / "coco_all.json", full)
    write_coco(out / "coco_base.json", _subset(records, lambda i: not is_novel(i), base))
    novel_set = _subset(records, is_novel, novel)
    novel_set.category_ids = [len(base) + 1 + k for k in range(len(novel))]  # same ids as in coco_all.json
    write_coco(out / "coco_novel.json", novel_set)
    synonyms = [synonym_class_name(*name.split(" ", 1)) for name in base]
    write_coco(out / "coco_synonyms.json",
               _subset(records, lambda i: not is_novel(i), base, names=synonyms, extras=False))
    return files + ["coco_all.json", "coco_base.json", "coco_novel.json", "coco_synonyms.json"]


def _categories(classes: list[str]) -> list[dict]:
    return [{"id": k + 1, "name": name} for k, name in enumerate(classes)]


def write_world_regions(world: str | Path, out: str | Path | None = None, verify: bool = True,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``regions.json`` (exact visible masks + descriptions) for a world generated earlier.

    Every image is drawn again from ``meta.json``'s seed and split (generation is deterministic), so the
    masks are the shapes exactly as they were drawn; the annotation ids and descriptions are those of the
    world's other files.

    Args:
        world: the folder `generate_world` wrote (with ``meta.json`` and ``images/``).
        out: the file to write (default ``world/regions.json``).
        verify: check that each redrawn image equals the PNG on disk (a world from another generator version,
            or edited images, would otherwise get masks that do not match its pixels).
        progress: called as ``progress(done, n)`` after each image.
    Returns:
        ``{"out", "images", "regions", "seconds"}``.
    Raises:
        ValueError: no meta.json, another generator version, or (with `verify`) an image that differs.
    """
    start = time.perf_counter()
    world = Path(world)
    meta_path = world / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{world} has no meta.json; regions can only be redrawn for a world written by "
                         "`groundscope synth` (or pass --regions to `groundscope synth`)")
    import json

    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("generator") != "groundscope.data.synth" or meta.get("version") != GENERATOR_VERSION:
        raise ValueError(f"{meta_path}: written by generator {meta.get('generator')} version {meta.get('version')}, "
                         f"this is groundscope.data.synth version {GENERATOR_VERSION}; generate the world again")
    seed, split, n = int(meta["seed"]), str(meta["split"]), int(meta["images"])
    layout = Layout.from_record(meta["layout"]) if meta.get("layout") else DEFAULT_LAYOUT
    classes = base_classes() if split == "train" else base_classes() + novel_classes()
    images, anns = [], []
    next_ann = 1
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), i]))
        image = sample_image(rng, split, layout)
        filename = f"images/{i:06d}.png"
        if verify:
            path = world / filename
            if not path.is_file():
                raise ValueError(f"{path} is missing; the world is incomplete")
            with Image.open(path) as im:
                if not np.array_equal(np.asarray(im.convert("RGB")), image.pixels):
                    raise ValueError(f"{path} differs from the image seed {seed} draws for it; was the world "
                                     "edited or written by other code? Masks would not match its pixels")
        record = annotate(image, filename, i + 1, next_ann, classes)
        next_ann += len(record.instances)
        entry, image_anns = synth_region_annotations(image, record, i + 1, classes)
        images.append(entry)
        anns += image_anns
        if progress is not None:
            progress(i + 1, n)
    target = Path(out) if out is not None else world / REGIONS_FILE
    write_regions(target, images, anns, _categories(classes))
    return {"out": str(target), "images": n, "regions": len(anns), "seconds": round(time.perf_counter() - start, 2)}
