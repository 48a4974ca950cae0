"""Region descriptions: (image, mask, description) records, DAM's training data, in a COCO-style JSON file.

On disk (COCO instances keys; ``categories`` and ``bbox`` are optional and only kept for reference)::

    {"images": [{"id": 1, "file_name": "images/000000.png", "height": 524, "width": 593}],
     "annotations": [{"id": 7, "image_id": 1,
                      "segmentation": {"size": [524, 593], "counts": "a`39Q..."},   # compressed RLE, or
                                      # {"size": [h, w], "counts": [12, 3, ...]}     uncompressed RLE, or
                                      # [[x1, y1, x2, y2, ...], ...]                 polygons (pixels)
                      "description": "A medium blue circle with a checkered pattern, ...",   # or "caption"
                      "category_id": 3, "bbox": [352, 1, 69, 69], "area": 3721, "iscrowd": 0}],
     "categories": [{"id": 3, "name": "blue circle"}]}

RLE follows COCO: run lengths of 0s then 1s alternately over the mask read column by column (Fortran
order), the first run counting zeros (0 when the mask starts with a one); the compressed form is COCO's
string encoding (each count as 5-bit groups in ASCII 48..111, counts after the second stored as the
difference to the count two before). `decode_segmentation` decodes with pycocotools when it is importable
(a groundscope dependency) and with the numpy decoders here otherwise; both give the same masks for RLE.
Polygons are filled as pycocotools fills them (without it: every pixel whose centre lies inside).

`read_regions` validates every annotation when the file is read, without decoding masks, and raises
`DataFormatError` naming the file and ``annotations[i]`` (with its id): a missing or empty description, an
unknown image id, an RLE whose size differs from the image's or whose counts do not add up to its pixels, a
polygon with an odd number of coordinates or fewer than 3 points, a mask without a single set pixel.

`synth_region_annotations` turns a synthetic-world image (`groundscope.data.synth`) into annotations with the
exact visible mask of each shape; `groundscope synth --regions` and `groundscope synth-regions` write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from groundscope.data.errors import DataFormatError
from groundscope.data.jsonio import load_json, write_json

REGIONS_FILE = "regions.json"


@dataclass
class RegionRecord:
    """One described region.

    Attributes:
        image: path of the image file (resolved against the image root).
        image_id, height, width: the image's COCO entry.
        segmentation: the annotation's ``segmentation`` as in the file (validated).
        description: the region's detailed description (DAM's target text).
        id: the annotation id (None when the file gives none).
        category: the category name, when the file has one.
    """

    image: Path
    image_id: int
    height: int
    width: int
    segmentation: Any
    description: str
    id: int | None = None
    category: str | None = None

    def mask(self) -> np.ndarray:
        """(H, W) bool mask of the region."""
        return decode_segmentation(self.segmentation, self.height, self.width)


@dataclass
class RegionSet:
    """The records of one file (in file order) and the file they came from."""

    records: list[RegionRecord] = field(default_factory=list)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------------------------- RLE
def rle_string_to_counts(s: str | bytes) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' ``rleFrString``).

    Raises:
        DataFormatError: a character outside COCO's alphabet or a string cut inside a count.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise DataFormatError("RLE counts string ends inside a count (is it truncated?)")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise DataFormatError(f"RLE counts string holds {chr(data[p])!r}, outside COCO's alphabet "
                                      "('0'..'o'); is it base64 or a list of numbers?")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_rle_string(counts: Sequence[int]) -> str:
    """Run lengths -> COCO's compressed RLE string (pycocotools' ``rleToString``)."""
    out = []
    for i, x in enumerate(counts):
        x = int(x)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> uncompressed RLE run lengths (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def counts_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Uncompressed RLE run lengths -> (H, W) bool (numpy; no pycocotools)."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and (runs < 0).any():
        raise DataFormatError(f"RLE counts must not be negative, got {runs[runs < 0][:3].tolist()}")
    if int(runs.sum()) != height * width:
        raise DataFormatError(f"RLE counts add up to {int(runs.sum())} pixels, but its size {height}x{width} "
                              f"has {height * width}")
    values = np.arange(runs.size) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) mask -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (the same string pycocotools'
    ``mask.encode`` writes)."""
    arr = np.asarray(mask, dtype=bool)
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": counts_to_rle_string(mask_to_counts(arr))}


# ---------------------------------------------------------------------------------------------- polygons
def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int,
                     use_pycocotools: bool | None = None) -> np.ndarray:
    """COCO polygons (each ``[x1, y1, x2, y2, ...]`` in pixels) -> (H, W) bool, their union.

    With pycocotools (default when importable) the pixels are COCO's; otherwise a pixel is set when its centre
    lies inside the polygon (even-odd rule), which is what COCO's rasterisation approximates (they can differ
    on pixels whose centre lies on the outline).
    """
    if use_pycocotools is None:
        use_pycocotools = _pycocotools() is not None
    if use_pycocotools:
        m = _pycocotools()
        rles = m.frPyObjects([list(map(float, p)) for p in polygons], height, width)
        return m.decode(m.merge(rles)).astype(bool)
    out = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        c0, c1 = max(int(np.floor(xy[:, 0].min())), 0), min(int(np.ceil(xy[:, 0].max())), width)
        r0, r1 = max(int(np.floor(xy[:, 1].min())), 0), min(int(np.ceil(xy[:, 1].max())), height)
        if c0 >= c1 or r0 >= r1:
            continue
        px = (np.arange(c0, c1) + 0.5)[None, :]
        py = (np.arange(r0, r1) + 0.5)[:, None]
        inside = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for (xa, ya), (xb, yb) in zip(xy, np.roll(xy, -1, axis=0)):
            if ya == yb:
                continue  # a horizontal edge crosses no horizontal ray
            crosses = (ya > py) != (yb > py)
            x_at = xa + (py - ya) * (xb - xa) / (yb - ya)
            inside ^= crosses & (px < x_at)
        out[r0:r1, c0:c1] |= inside
    return out


def _pycocotools():
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        return None
    return coco_mask


def decode_segmentation(segmentation: Any, height: int, width: int, use_pycocotools: bool | None = None
                        ) -> np.ndarray:
    """A COCO ``segmentation`` (compressed / uncompressed RLE or polygons) -> (H, W) bool.

    Args:
        use_pycocotools: None (default) uses pycocotools when importable; False forces the numpy decoders.
    Raises:
        DataFormatError: the segmentation is malformed or its size is not (height, width).
    """
    _check_segmentation(segmentation, height, width)
    if use_pycocotools is None:
        use_pycocotools = _pycocotools() is not None
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width, use_pycocotools)
    counts = segmentation["counts"]
    if use_pycocotools:
        m = _pycocotools()
        rle = (m.frPyObjects(segmentation, height, width) if isinstance(counts, list)
               else {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
        return m.decode(rle).astype(bool)
    return counts_to_mask(counts if isinstance(counts, list) else rle_string_to_counts(counts), height, width)


def _check_segmentation(seg: Any, height: int, width: int) -> int:
    """Validate a segmentation without rasterising it; returns its foreground pixel count (RLE) or a positive
    polygon area estimate. Raises an unlocated DataFormatError."""
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise DataFormatError(f"segmentation RLE needs 'size': [height, width], got {size!r}")
        if list(size) != [height, width]:
            raise DataFormatError(f"segmentation RLE size {list(size)} differs from the image's [{height}, {width}] "
                                  "(height, width)")
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                raise DataFormatError("uncompressed RLE counts must be non-negative integers")
            runs = counts
        elif isinstance(counts, (str, bytes)):
            runs = rle_string_to_counts(counts)
            if any(v < 0 for v in runs):
                raise DataFormatError("compressed RLE decodes to a negative run length (corrupt counts string)")
        else:
            raise DataFormatError(f"segmentation RLE 'counts' must be a string or a list of integers, got "
                                  f"{type(counts).__name__}")
        if sum(runs) != height * width:
            raise DataFormatError(f"RLE counts add up to {sum(runs)} pixels, but the image has {height}x{width} = "
                                  f"{height * width}")
        return sum(runs[1::2])
    if isinstance(seg, list):
        if not seg:
            raise DataFormatError("segmentation is an empty list of polygons")
        area = 0.0
        for k, poly in enumerate(seg):
            if (not isinstance(poly, (list, tuple))
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
                raise DataFormatError(f"polygon {k} must be a flat list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2 or len(poly) < 6:
                raise DataFormatError(f"polygon {k} has {len(poly)} coordinates; it needs an even number, at least "
                                      "6 (3 points)")
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(xy).all():
                raise DataFormatError(f"polygon {k} holds a non-finite coordinate")
            x, y = xy[:, 0], xy[:, 1]
            area += abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2
        return 1 if area > 0 else 0
    raise DataFormatError(f"segmentation must be RLE {{'size', 'counts'}} or a list of polygons, got "
                          f"{type(seg).__name__}")


# ---------------------------------------------------------------------------------------------- reading
def _description(ann: dict) -> str:
    for key in ("description", "caption"):
        if key in ann:
            value = ann[key]
            if not isinstance(value, str) or not value.strip():
                raise DataFormatError(f"'{key}' must be a non-empty string, got {value!r}")
            return value.strip()
    raise DataFormatError("annotation has no 'description' (or 'caption'): the text DAM learns to write")


def read_regions(path: str | Path, image_root: str | Path | None = None) -> RegionSet:
    """Read a region-description file (format in the module docstring), validating every annotation.

    Args:
        path: the ``.json`` file.
        image_root: folder the images' ``file_name`` are relative to (default: the file's folder).
    Raises:
        DataFormatError: naming the file and ``images[i]`` / ``annotations[i]`` (and its id).
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataFormatError("a region file must be a JSON object with 'images' and 'annotations' lists "
                              "(COCO style, each annotation with a segmentation and a description)", path)
    root = Path(image_root) if image_root is not None else path.parent
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        try:
            if not isinstance(im, dict):
                raise DataFormatError(f"an image must be a JSON object, got {type(im).__name__}")
            missing = [k for k in ("id", "file_name", "height", "width") if k not in im]
            if missing:
                raise DataFormatError(f"image is missing key(s) {missing}")
            iid = im["id"]
            if not isinstance(iid, int) or isinstance(iid, bool):
                raise DataFormatError(f"image id must be an integer, got {iid!r}")
            if iid in images:
                raise DataFormatError(f"duplicate image id {iid}")
            for key in ("height", "width"):
                if not isinstance(im[key], int) or isinstance(im[key], bool) or im[key] <= 0:
                    raise DataFormatError(f"{key} must be a positive integer, got {im[key]!r}")
            if not isinstance(im["file_name"], str) or not im["file_name"]:
                raise DataFormatError(f"file_name must be a non-empty string, got {im['file_name']!r}")
        except DataFormatError as e:
            raise e.located(path, index=i, section="images") from None
        images[iid] = im
    names = {c["id"]: c.get("name") for c in data.get("categories") or [] if isinstance(c, dict) and "id" in c}
    records = []
    for i, ann in enumerate(data["annotations"]):
        try:
            if not isinstance(ann, dict):
                raise DataFormatError(f"an annotation must be a JSON object, got {type(ann).__name__}")
            for key in ("image_id", "segmentation"):
                if key not in ann:
                    raise DataFormatError(f"annotation is missing '{key}'")
            im = images.get(ann["image_id"])
            if im is None:
                raise DataFormatError(f"annotation refers to unknown image_id {ann['image_id']!r}")
            text = _description(ann)
            if not _check_segmentation(ann["segmentation"], im["height"], im["width"]):
                raise DataFormatError("the segmentation covers no pixel: there is no region to describe")
        except DataFormatError as e:
            ident = f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else ""
            raise DataFormatError(e.reason + ident, path, index=i, section="annotations") from None
        records.append(RegionRecord(image=root / im["file_name"], image_id=im["id"], height=im["height"],
                                    width=im["width"], segmentation=ann["segmentation"], description=text,
                                    id=ann.get("id"), category=names.get(ann.get("category_id"))))
    return RegionSet(records=records, path=path)


def write_regions(path: str | Path, images: list[dict], annotations: list[dict],
                  categories: list[dict] | None = None) -> Path:
    """Write a region file (deterministic bytes: fixed key order, compact JSON)."""
    return write_json(path, {"images": images, "annotations": annotations, "categories": categories or []})


# ---------------------------------------------------------------------------------------------- synthetic world
def synth_region_annotations(image, record, image_id: int, classes: list[str]) -> tuple[dict, list[dict]]:
    """(COCO image entry, annotations) of one synthetic image: each object's exact visible mask (the pixels
    where its shape shows, `SynthImage.object_mask`) as compressed RLE, with its description.

    Args:
        image: the `groundscope.data.synth.SynthImage` (with its owner map).
        record: its `ImageRecord` from `groundscope.data.synth.annotate` (descriptions, ids, boxes).
        image_id: the COCO image id.
        classes: the split's class names (category id = index + 1).
    """
    h, w = image.pixels.shape[:2]
    entry = {"id": image_id, "file_name": record.filename, "height": h, "width": w}
    anns = []
    for k, inst in enumerate(record.instances):
        mask = image.object_mask(k)
        x1, y1, x2, y2 = inst.bbox
        anns.append({"id": inst.id, "image_id": image_id, "category_id": classes.index(inst.category) + 1,
                     "bbox": [int(x1), int(y1), int(x2 - x1), int(y2 - y1)], "area": int(mask.sum()),
                     "iscrowd": 0, "segmentation": encode_rle(mask), "description": inst.description})
    return entry, anns
