"""RKD's offline step: per training image, K class-agnostic region proposals, the teacher's embedding of each
region's crop, and pseudo-boxes for the image-level labels, cached on disk one file per image.

* Proposals: the detector prompted with generic prompts (the reference prompts an MViT with "all objects", "all
  entities", ...; we prompt our own detector), the top `proposal_top` boxes of each prompt, class-agnostic NMS at
  0.5, the best K (5 in the reference).
* Teacher: tight crops of the K boxes through the teacher's image encoder (`groundscope.models.teacher`).
* Pseudo-boxes: for every image-level label c, the detector's top-1 box for the prompt ``pseudo_template`` (the
  reference: "every {c}") when its score exceeds `pseudo_threshold` (0.95 on COCO in the reference; a detector
  whose scores run lower needs a lower one).

Layout of ``OUT``: ``manifest.json`` (the settings; a rerun with other settings into the same folder is refused)
and ``regions/<image path with / as __>.safetensors`` holding ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,),
``embeddings`` (K, D) float16 and ``pseudo_boxes`` (P, 4) with their labels and scores in the file's metadata.
A rerun skips the images whose file exists, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from groundscope.data.atomic import atomic_open
from groundscope.detections import Detections

MANIFEST = "manifest.json"
REFERENCE_PROPOSAL_PROMPTS = ("all objects", "all entities", "all visible objects and entities",
                              "all obscure objects and entities")
REGION_DIR = "regions"


class RegionCacheError(ValueError):
    """A region cache cannot be built or read; the message names the file and the fix."""


@dataclass
class RegionSettings:
    """What determines a cache's contents (the manifest)."""

    teacher: str
    detector: str
    k: int = 5
    # official: tools/get_rkd_clip_feat.py ~L41 (TEXT_QUERIES), in its word order
    proposal_prompts: list[str] = field(default_factory=lambda: list(REFERENCE_PROPOSAL_PROMPTS))
    proposal_top: int = 50
    nms_iou: float = 0.5
    pseudo_template: str = "every {}"
    pseudo_threshold: float = 0.95
    image_labels: str | None = None
    detector_precision: str = "fp32"  # load_detector's precision for the proposals and pseudo-boxes


@dataclass
class ImageRegions:
    """The cached regions of one image.

    Attributes:
        boxes: (K, 4) float32 xyxy pixels of the proposals (K may be smaller when the detector found fewer).
        scores: (K,) proposal scores.
        embeddings: (K, D) float32 teacher embeddings (L2-normalised).
        pseudo_boxes: (P, 4) float32 xyxy pixels.
        pseudo_labels: P class names (the image-level labels that got a box).
        pseudo_scores: P detector scores.
        labels: all image-level labels of the image (with or without a pseudo-box).
    """

    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    pseudo_boxes: np.ndarray
    pseudo_labels: list[str]
    pseudo_scores: list[float]
    labels: list[str]


def cache_key(filename: str) -> str:
    return filename.replace("\\", "/").replace("/", "__") + ".safetensors"


def read_image_labels(path: str | Path) -> dict[str, list[str]]:
    """Image-level labels per image file name, from a COCO file (the category names of each image's annotations;
    boxes are ignored) or a JSON-lines file of ``{"file_name": ..., "labels": [...]}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RegionCacheError(f"cannot read image labels '{path}': {e.strerror or e}") from e
    out: dict[str, list[str]] = {}
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    rec = json.loads(line)
                    out[str(rec["file_name"])] = [str(x) for x in rec["labels"]]
            return out
        data = json.loads(text)
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        per: dict[int, set] = {i: set() for i in files}
        for a in data["annotations"]:
            per[a["image_id"]].add(names[a["category_id"]])
    except (ValueError, KeyError, TypeError) as e:
        raise RegionCacheError(
            f"'{path}' is not an image-label file ({type(e).__name__}: {e}); give a COCO file (categories of each "
            "image's annotations) or JSON lines {\"file_name\": ..., \"labels\": [...]}"
        ) from e
    return {files[i]: sorted(v) for i, v in per.items()}


def _check_manifest(out: Path, settings: RegionSettings) -> None:
    path = out / MANIFEST
    wanted = asdict(settings)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in wanted if old.get(k) != wanted[k]]
        if diff:
            raise RegionCacheError(
                f"'{out}' holds regions made with other settings ({', '.join(f'{k}: {old.get(k)!r} -> {wanted[k]!r}' for k in diff)}); "
                "use another --out folder, or delete this one to rebuild it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def propose(detector, image, settings: RegionSettings) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) xyxy boxes and (K,) scores: class-agnostic proposals of one image."""
    # each prompt on its own, as the reference prompts MViT; the image backbone runs once
    per_prompt = detector.detect_each(image, list(settings.proposal_prompts), max_detections=settings.proposal_top)
    dets = Detections.merge(per_prompt).nms(settings.nms_iou, class_agnostic=True).top(settings.k)
    return dets.xyxy.astype(np.float32).reshape(-1, 4), dets.scores.astype(np.float32)


def pseudo_boxes(detector, image, labels: list[str], settings: RegionSettings) -> tuple[np.ndarray, list[str], list[float]]:
    """Top-1 box per image-level label above the threshold."""
    boxes, names, scores = [], [], []
    per_label = detector.detect_each(image, [settings.pseudo_template.format(x) for x in labels], max_detections=1)
    for label, dets in zip(labels, per_label):
        if len(dets) and float(dets.scores[0]) > settings.pseudo_threshold:
            boxes.append(dets.xyxy[0])
            names.append(label)
            scores.append(float(dets.scores[0]))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), names, scores


def save_image_regions(path: Path, r: ImageRegions) -> None:
    from safetensors.torch import save

    tensors = {
        "boxes": torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.as_tensor(r.scores, dtype=torch.float32).reshape(-1),
        "embeddings": torch.as_tensor(r.embeddings).to(torch.float16),
        "pseudo_boxes": torch.as_tensor(r.pseudo_boxes, dtype=torch.float32).reshape(-1, 4),
    }
    # One metadata entry: safetensors writes its metadata map in hash order, which changes from process to
    # process, so several entries would make the same regions different bytes in a resumed run.
    meta = {"groundscope_regions": json.dumps({"labels": r.labels, "pseudo_labels": r.pseudo_labels,
                                               "pseudo_scores": r.pseudo_scores})}
    with atomic_open(path, "wb") as f:  # a file that exists is complete: resume trusts it
        f.write(save(tensors, metadata=meta))


def load_image_regions(path: str | Path) -> ImageRegions:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise RegionCacheError(f"cannot read region cache '{path}': {e}; delete it and rerun embed-regions") from e
    # caches written before the single entry hold one metadata entry per list
    lists = json.loads(meta["groundscope_regions"]) if "groundscope_regions" in meta else {
        k: json.loads(meta.get(k, "[]")) for k in ("labels", "pseudo_labels", "pseudo_scores")}
    return ImageRegions(
        t["boxes"].numpy(), t["scores"].numpy(), t["embeddings"].float().numpy(), t["pseudo_boxes"].numpy(),
        lists.get("pseudo_labels", []), lists.get("pseudo_scores", []), lists.get("labels", []),
    )


class RegionCache:
    """Read access to a finished cache folder (what training uses)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise RegionCacheError(f"'{self.folder}' is not a region cache (no {MANIFEST}); build it with "
                                   "`groundscope distill embed-regions`")
        self.settings = RegionSettings(**json.loads(path.read_text(encoding="utf-8")))

    def get(self, filename: str) -> ImageRegions | None:
        """The regions of `filename` (as the annotation file names it), or None when it was not embedded."""
        path = self.folder / REGION_DIR / cache_key(filename)
        return load_image_regions(path) if path.exists() else None


def embed_regions(
    detector,
    teacher,
    filenames: Iterable[str],
    image_root: str | Path,
    out: str | Path,
    settings: RegionSettings,
    labels: dict[str, list[str]] | None = None,
    on_image: Callable[[str, bool], None] | None = None,
) -> dict:
    """Build (or finish) a region cache. Returns counts: embedded, reused, failed (file -> error).

    Args:
        detector: a `GroundingDetector` (proposals and pseudo-boxes).
        teacher: a `groundscope.models.teacher.Teacher`.
        filenames: image paths relative to `image_root`, as the training annotation file names them.
        labels: image-level labels per file name (pseudo-boxes are made for these).
        on_image: called with (filename, reused) after each image (progress bars).
    """
    from groundscope.models.teacher import crop_regions
    from groundscope.images import ImageLoadError, load_image

    out = Path(out)
    _check_manifest(out, settings)
    (out / REGION_DIR).mkdir(parents=True, exist_ok=True)
    counts = {"embedded": 0, "reused": 0, "failed": {}}
    for name in filenames:
        path = out / REGION_DIR / cache_key(name)
        if path.exists():
            counts["reused"] += 1
            if on_image:
                on_image(name, True)
            continue
        try:
            image = load_image(Path(image_root) / name)
        except (ImageLoadError, OSError) as e:
            counts["failed"][name] = str(e)
            if on_image:
                on_image(name, False)
            continue
        boxes, scores = propose(detector, image, settings)
        emb = teacher.embed_images(crop_regions(image, boxes)).numpy() if len(boxes) else np.zeros((0, teacher.dim))
        image_labels = list((labels or {}).get(name, []))
        pb, pl, ps = pseudo_boxes(detector, image, image_labels, settings) if image_labels else (
            np.zeros((0, 4), np.float32), [], [])
        save_image_regions(path, ImageRegions(boxes, scores, emb, pb, pl, ps, image_labels))
        counts["embedded"] += 1
        if on_image:
            on_image(name, False)
    return counts
