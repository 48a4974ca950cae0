"""Regions as masks and DAM's focal prompt: the full image with its mask, plus a crop around the region.

Describe Anything (Lian et al., 2025) describes a region given as a binary mask. A box or a few clicks are turned
into a mask first; the reference turns them into a mask with SAM / SAM 2. We ship no segmenter, so
`region_to_mask` fills the box (or draws small discs at the points) instead: a crude mask that keeps the
region's place and extent but not its outline. Run a SAM-style segmenter yourself when the outline matters.

The focal prompt (`focal_prompt`) pairs the full image and mask with a crop around the region (`focal_crop`),
following the reference's ``focal_crop`` mode:

    tight box   (x0, y0, w, h) of the mask's pixels
    minimum     w, h = max(w, 48), max(h, 48), the box centre kept (48 px: a smaller crop, resized to the
                vision input size, is blown up into artefacts the encoder never saw)
    crop        columns x0 - w .. x0 + 2w, rows y0 - h .. y0 + 2h (3x the box on each axis), clamped to the
                image and not made square; the encoder's resize stretches it to a square

That is ``mode="clamp"``, DAM's own, and what the released models expect. ``mode="square"`` (an option for models
trained with it, e.g. `groundscope pretrain-vlm --crop-mode square`) keeps the region centred and undistorted: a
square of side 3x the box's longer side (after the minimum), centred on the box, its parts past the image's border
filled with grey (`PAD_VALUE`, the SigLIP mean) and outside the mask. A clamped crop of a region near the border
is stretched by the resize and puts the region off its centre, and models read those regions worse
(benchmarks/dam_breakdown.py: recognition by crop stretch).

`focal_pixels` turns a prompt into the 8-channel tensor the model reads (full RGB, full mask, crop RGB, crop
mask), each resized to the encoder's input size and normalised like the reference's SigLIP processor;
`focal_batch` does it for a batch of image and video regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from groundscope.images import ImageInput, load_image

MIN_CROP = 48  # the reference's min_box_w / min_box_h
CROP_MODES = ("clamp", "square")  # focal_crop's modes: the reference's, and centred squares padded past the border
PAD_VALUE = 127  # grey for a square crop's parts past the image's border: about 0 after SigLIP's normalisation


class RegionError(ValueError):
    """A region (mask, box or points) cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class CropBox:
    """A crop of the image around a region, in pixels.

    Attributes:
        x0, y0, x1, y1: the crop's columns ``x0:x1`` and rows ``y0:y1`` (ends exclusive): inside the image for
            the reference's mode, possibly past its border for ``mode="square"`` (`cut` pads those parts).
        region: the mask's tight box ``(x, y, w, h)`` before the 48-px minimum.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    region: tuple[int, int, int, int]

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` to index an (H, W, ...) array with (a crop inside the image; else use `cut`)."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def cut(self, arr: np.ndarray, fill) -> np.ndarray:
        """``arr[rows, cols]`` of an (H, W, ...) array, the crop's parts past the border set to `fill`:
        (height, width, ...)."""
        h, w = arr.shape[:2]
        if self.x0 >= 0 and self.y0 >= 0 and self.x1 <= w and self.y1 <= h:
            return arr[self.slices]
        out = np.full((self.height, self.width) + arr.shape[2:], fill, dtype=arr.dtype)
        r0, c0 = max(self.y0, 0), max(self.x0, 0)
        r1, c1 = min(self.y1, h), min(self.x1, w)
        if r0 < r1 and c0 < c1:
            out[r0 - self.y0:r1 - self.y0, c0 - self.x0:c1 - self.x0] = arr[r0:r1, c0:c1]
        return out


@dataclass
class FocalPrompt:
    """One region's focal prompt.

    Attributes:
        image: (H, W, 3) uint8, the full image.
        mask: (H, W) bool, the region in the full image.
        crop_image: (h, w, 3) uint8, ``image[crop.slices]`` (``crop.cut``: padded past the border).
        crop_mask: (h, w) bool, ``mask[crop.slices]`` (False past the border).
        crop: where the crop lies in the full image.
    """

    image: np.ndarray
    mask: np.ndarray
    crop_image: np.ndarray
    crop_mask: np.ndarray
    crop: CropBox


def _as_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., 0]  # a mask saved as an image: any channel carries it
    if arr.ndim != 2:
        raise RegionError(f"{name}: a mask must be (H, W) (or (H, W, C) as an image), got shape {arr.shape}")
    return arr > 0


def region_to_mask(image_hw: tuple[int, int], mask=None, box: Sequence[float] | None = None,
                   points=None, radius: int | None = None, name: str = "region") -> np.ndarray:
    """The region as an (H, W) bool mask, from exactly one of `mask`, `box` or `points`.

    Args:
        image_hw: (H, W) of the image the region lies in.
        mask: (H, W) array, non-zero inside (bool, 0/1 or 0/255); must have the image's size.
        box: (x1, y1, x2, y2) in pixels; becomes the filled rectangle of every pixel it overlaps
            (columns floor(x1) .. ceil(x2) - 1), clipped to the image.
        points: (N, 2) array of (x, y) pixels; becomes discs of `radius` around them.
        radius: disc radius in pixels; default 1% of the image's shorter side, at least 3 px.
        name: how errors name the region.
    Raises:
        RegionError: not exactly one input, a mask of another size than the image, a degenerate box, or a box /
            points entirely outside the image.

    DAM reads masks. The reference makes one from a box or clicks with SAM; we ship no segmenter, so a box
    gives its rectangle and points give discs. For a faithful outline, segment first and pass the mask.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    given = [x is not None for x in (mask, box, points)]
    if sum(given) != 1:
        raise RegionError(f"{name}: give exactly one of mask, box or points (got {sum(given)})")
    if mask is not None:
        arr = _as_mask(mask, name)
        if arr.shape != (h, w):
            raise RegionError(f"{name}: mask is {arr.shape[0]}x{arr.shape[1]} (HxW) but the image is {h}x{w}; "
                              "pass a mask of the image's size (resize it with nearest-neighbour first)")
        return arr
    out = np.zeros((h, w), dtype=bool)
    if box is not None:
        if len(box) != 4:
            raise RegionError(f"{name}: a box is (x1, y1, x2, y2), got {list(box)}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(np.isfinite([x1, y1, x2, y2])):
            raise RegionError(f"{name}: box {list(box)} has a coordinate that is not a finite number (nan or "
                              "inf); a box is four pixel coordinates (x1, y1, x2, y2)")
        if not (x2 > x1 and y2 > y1):
            raise RegionError(f"{name}: box {list(box)} is empty; a box is (x1, y1, x2, y2) with x2 > x1, y2 > y1")
        c0, r0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        c1, r1 = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
        if c0 >= c1 or r0 >= r1:
            raise RegionError(f"{name}: box {list(box)} lies entirely outside the {w}x{h} (WxH) image; "
                              "boxes are (x1, y1, x2, y2) in pixels of this image")
        out[r0:r1, c0:c1] = True
        return out
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
    if len(pts) == 0:
        raise RegionError(f"{name}: no points given; pass (N, 2) (x, y) pixels")
    r = radius if radius is not None else max(3, round(0.01 * min(h, w)))
    rows, cols = np.ogrid[:h, :w]
    for x, y in pts:
        out |= (cols - x) ** 2 + (rows - y) ** 2 <= r * r
    if not out.any():
        raise RegionError(f"{name}: every point lies outside the {w}x{h} (WxH) image; points are (x, y) pixels")
    return out


def filled_box(mask, name: str = "region") -> np.ndarray:
    """(H, W) mask -> the same-size bool mask filled over its tight box: what `region_to_mask` makes of the
    mask's box, i.e. what the model reads for a ``box`` region. Training on a share of such masks
    (``dam.box_prob``) teaches a model the box prompts its users give.

    Raises:
        RegionError: the mask is empty.
    """
    arr = _as_mask(mask, name)
    ys, xs = np.nonzero(arr)
    if len(ys) == 0:
        raise RegionError(f"{name}: the mask is empty (no pixel set), so it has no box")
    # Through region_to_mask's own box path, so training sees exactly what a box prompt becomes.
    return region_to_mask(arr.shape, box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), name=name)


def focal_crop(mask, min_size: int = MIN_CROP, name: str = "region", mode: str = "clamp") -> CropBox:
    """The focal crop of an (H, W) mask: the reference's (``"clamp"``) or a centred square (``"square"``);
    geometry in the module docstring.

    Raises:
        RegionError: the mask is empty.
        ValueError: an unknown `mode`.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    arr = _as_mask(mask, name)
    img_h, img_w = arr.shape
    ys, xs = np.nonzero(arr)
    if len(ys) == 0:
        raise RegionError(f"{name}: the mask is empty (no pixel set), so there is nothing to describe; "
                          "check the mask's threshold or the box / points it came from")
    x0, y0 = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0
    region = (x0, y0, w, h)
    xc, yc = x0 + w / 2, y0 + h / 2
    w, h = max(w, min_size), max(h, min_size)
    if mode == "square":
        side = 3 * max(w, h)
        sx, sy = int(round(xc - side / 2)), int(round(yc - side / 2))
        return CropBox(x0=sx, y0=sy, x1=sx + side, y1=sy + side, region=region)
    # int() truncates towards zero (not floor) as the reference does; it only differs for a box hanging over the
    # top / left border, where the clamp below then decides.
    x0, y0 = int(xc - w / 2), int(yc - h / 2)
    return CropBox(x0=max(x0 - w, 0), y0=max(y0 - h, 0), x1=min(x0 + 2 * w, img_w), y1=min(y0 + 2 * h, img_h),
                   region=region)


def focal_prompt(image: ImageInput, mask, min_size: int = MIN_CROP, name: str = "region",
                 crop: bool = True, mode: str = "clamp") -> FocalPrompt:
    """Full image + mask and the focal crop of both.

    Args:
        image: (H, W, 3) uint8 array, PIL image or path (anything `groundscope.images.load_image` reads).
        mask: (H, W) mask of the region (non-zero inside); use `region_to_mask` for a box or points.
        crop: False for the ablation without the focal crop: the "crop" is the whole image (the mask is still
            checked), so the model sees the full image and mask only.
        mode: the crop's geometry, `focal_crop`'s ``"clamp"`` (the reference's) or ``"square"``.
    Raises:
        RegionError: the mask's size differs from the image's, or the mask is empty.
    """
    rgb = np.asarray(load_image(image))
    arr = region_to_mask(rgb.shape[:2], mask=mask, name=name)
    box = focal_crop(arr, min_size=min_size, name=name, mode=mode)  # raises on an empty mask, also without the crop
    if not crop:
        box = CropBox(0, 0, arr.shape[1], arr.shape[0], box.region)
    return FocalPrompt(image=rgb, mask=arr, crop_image=box.cut(rgb, PAD_VALUE), crop_mask=box.cut(arr, False),
                       crop=box)


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _to_square(arr: np.ndarray, size: int, resample: str, aspect: str, fill: tuple[int, ...]) -> np.ndarray:
    """(h, w[, 3]) uint8 -> (size, size[, 3]) float32 in [0, 1]: stretched ("resize") or, with "pad", first
    centred on a square of `fill` (LLaVA's expand2square) so the aspect ratio survives."""
    im = Image.fromarray(arr)
    if aspect == "pad" and im.width != im.height:
        side = max(im.width, im.height)
        square = Image.new(im.mode, (side, side), fill if im.mode == "RGB" else fill[0])
        square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        im = square
    return np.asarray(im.resize((size, size), _RESAMPLE[resample]), dtype=np.float32) / 255.0


def image_pixels(rgb: np.ndarray, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic", aspect: str = "resize"
                 ) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, size, size) float32, or an (h, w) uint8 mask with one-value `mean` / `std` ->
    (1, size, size): one image through the encoder's input processing, exactly as `focal_pixels` processes the
    full image and the crop (the base VLM's input)."""
    if resample not in _RESAMPLE or aspect not in ("resize", "pad"):
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)} and aspect 'resize' or 'pad', "
                         f"got {resample!r}, {aspect!r}")
    fill = tuple(int(m * 255) for m in mean)
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    img = torch.from_numpy(_to_square(np.ascontiguousarray(rgb), size, resample, aspect, fill))
    img = img[None] if img.ndim == 2 else img.permute(2, 0, 1)
    return (img - m) / s


def focal_pixels(prompt: FocalPrompt, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic",
                 aspect: str = "resize") -> torch.Tensor:
    """The model's input for one region: (8, size, size) float32.

    Channels: 0-2 full RGB, 3 full mask, 4-6 crop RGB, 7 crop mask. Images and masks go through the same
    resize and normalisation, as the reference runs the mask (0/255 as an image) through the image processor:
    with SigLIP's mean = std = 0.5 a mask is -1 outside and +1 inside (values between at resized edges).
    `aspect` is the top-level config's ``image_aspect_ratio``: "resize" (stretch) or "pad".
    """
    parts = []
    for rgb, msk in ((prompt.image, prompt.mask), (prompt.crop_image, prompt.crop_mask)):
        parts += [image_pixels(rgb, size, mean, std, resample, aspect),
                  # a mask pads with the first channel's fill, as the reference pads it as an image
                  image_pixels(msk.astype(np.uint8) * 255, size, mean[:1], std[:1], resample, aspect)]
    return torch.cat(parts, 0)


def focal_batch(images: Sequence, masks: Sequence, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic", aspect: str = "resize",
                min_size: int = MIN_CROP, crop: bool = True, mode: str = "clamp") -> tuple[torch.Tensor, list[int]]:
    """Focal pixels of N regions -> ((M, 8, size, size), frames per region), frames in region then time order.

    ``images[i]`` is an image (array, PIL, path) with ``masks[i]`` its (H, W) mask, or a video: a list of frames
    with a list of masks, one per frame (each frame gets its own focal crop).
    Raises:
        RegionError: counts that do not pair up, or a mask `focal_prompt` rejects (named "region i frame f").
    """
    if len(images) != len(masks):
        raise RegionError(f"{len(images)} images but {len(masks)} masks; pass one mask (list) per image (list)")
    rows, frames = [], []
    for i, (img, msk) in enumerate(zip(images, masks)):
        video = isinstance(img, (list, tuple))
        clip_imgs, clip_masks = (list(img), list(msk)) if video else ([img], [msk])
        if len(clip_imgs) != len(clip_masks) or not clip_imgs:
            raise RegionError(f"region {i}: {len(clip_imgs)} frames but {len(clip_masks)} masks; pass one per frame")
        for f, (im, mk) in enumerate(zip(clip_imgs, clip_masks)):
            prompt = focal_prompt(im, mk, min_size, name=f"region {i}" + (f" frame {f}" if video else ""), crop=crop,
                                  mode=mode)
            rows.append(focal_pixels(prompt, size, mean, std, resample, aspect))
        frames.append(len(clip_imgs))
    return torch.stack(rows), frames
