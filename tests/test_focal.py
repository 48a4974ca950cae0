"""DAM's regions and focal prompt: boxes and points as masks, and the focal crop's geometry computed by hand
(3x the mask's box on each axis, each side at least 48 px around the same centre, clamped to the image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from groundscope.describe.focal import (
    CropBox,
    RegionError,
    focal_crop,
    focal_pixels,
    focal_prompt,
    region_to_mask,
)

H, W = 200, 300  # every case below lies in a 300 x 200 (W x H) image


def _crop(box) -> CropBox:
    return focal_crop(region_to_mask((H, W), box=box))


def _edges(c: CropBox) -> tuple[int, int, int, int]:
    return c.x0, c.y0, c.x1, c.y1


# ---------------------------------------------------------------------------------------------- masks
def test_box_becomes_filled_rectangle_of_overlapped_pixels_clipped_to_image():
    m = region_to_mask((H, W), box=(10.5, 20.2, 30.1, 40.9))
    ys, xs = np.nonzero(m)
    # floor(10.5) = 10 .. ceil(30.1) - 1 = 30; floor(20.2) = 20 .. ceil(40.9) - 1 = 40
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 30, 20, 40)
    assert m.sum() == 21 * 21 and m.dtype == bool
    clipped = region_to_mask((H, W), box=(-10, -5, 20, 15))
    assert clipped.sum() == 20 * 15 and clipped[0, 0] and clipped[14, 19] and not clipped[15, 0]


def test_points_become_discs():
    m = region_to_mask((100, 200), points=[(50, 40)])  # radius max(3, 1% of 100 = 1) = 3
    assert m.sum() == 29  # integer offsets with dx^2 + dy^2 <= 9
    assert m[40, 50] and m[40, 53] and not m[40, 54] and m[43, 50] and m[42, 52] and not m[42, 53]
    big = region_to_mask((1000, 2000), points=np.array([[100, 100], [1500, 800]]))  # radius 1% of 1000 = 10
    assert big[100, 110] and not big[100, 111] and big[810, 1500] and not big[811, 1500]
    assert region_to_mask((100, 200), points=[(0, 0)], radius=5)[5, 0]


def test_mask_passes_through_and_is_checked():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:9, 7:12] = 255
    out = region_to_mask((H, W), mask=mask)
    assert out.dtype == bool and out.sum() == 20
    with pytest.raises(RegionError, match=r"mask is 100x300 .* image is 200x300"):
        region_to_mask((H, W), mask=np.ones((100, 300), bool))
    with pytest.raises(RegionError, match="exactly one"):
        region_to_mask((H, W), mask=mask, box=(0, 0, 5, 5))
    with pytest.raises(RegionError, match="exactly one"):
        region_to_mask((H, W))


def test_box_outside_and_degenerate_box_raise():
    with pytest.raises(RegionError, match="entirely outside"):
        region_to_mask((H, W), box=(400, 10, 450, 50))
    with pytest.raises(RegionError, match="entirely outside"):
        region_to_mask((H, W), box=(-50, -50, -1, -1))
    with pytest.raises(RegionError, match="empty"):
        region_to_mask((H, W), box=(30, 30, 30, 60))
    with pytest.raises(RegionError, match="outside"):
        region_to_mask((H, W), points=[(-50, -50)])


# ---------------------------------------------------------------------------------------------- focal crop
def test_box_in_the_middle():
    c = _crop((100, 60, 160, 110))  # tight box x 100, y 60, w 60, h 50 (both >= 48)
    assert c.region == (100, 60, 60, 50)
    # cols 100 - 60 .. 100 + 120, rows 60 - 50 .. 60 + 100: 3x the box, the box in the middle third
    assert _edges(c) == (40, 10, 220, 160)
    assert (c.width, c.height) == (180, 150)


def test_box_at_the_border_is_clamped():
    c = _crop((0, 0, 50, 60))  # w 50, h 60
    assert _edges(c) == (0, 0, 100, 120)  # x0 - w = -50 -> 0, y0 - h = -60 -> 0
    # bottom-right: w 40 -> 48, h 30 -> 48 around the centre (280, 185): x0 = 256, y0 = 161
    c = _crop((260, 170, 300, 200))
    assert _edges(c) == (208, 113, 300, 200)  # 256 + 96 = 352 -> 300, 161 + 96 = 257 -> 200


def test_tiny_box_gets_48_px_around_its_centre():
    c = _crop((140, 90, 150, 100))  # 10 x 10 around (145, 95)
    assert c.region == (140, 90, 10, 10)
    # w = h = 48, x0 = 145 - 24 = 121, y0 = 95 - 24 = 71 -> cols 73 .. 217, rows 23 .. 167
    assert _edges(c) == (73, 23, 217, 167)
    assert ((c.x0 + c.x1) / 2, (c.y0 + c.y1) / 2) == (145, 95)
    # a 1-pixel region at (150, 100): centre (150.5, 100.5), x0 = int(126.5) = 126, y0 = int(76.5) = 76
    one = np.zeros((H, W), bool)
    one[100, 150] = True
    assert _edges(focal_crop(one)) == (126 - 48, 76 - 48, 126 + 96, 76 + 96)


def test_empty_mask_raises_naming_the_region():
    with pytest.raises(RegionError, match=r"region 3: the mask is empty .* check"):
        focal_crop(np.zeros((H, W), bool), name="region 3")


# ---------------------------------------------------------------------------------------------- prompt + pixels
def test_focal_prompt_crops_image_and_mask_together():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = region_to_mask((H, W), box=(100, 60, 160, 110))
    fp = focal_prompt(Image.fromarray(image), mask)
    assert np.array_equal(fp.image, image) and fp.mask.dtype == bool
    assert _edges(fp.crop) == (40, 10, 220, 160)
    assert np.array_equal(fp.crop_image, image[10:160, 40:220])
    assert np.array_equal(fp.crop_mask, mask[10:160, 40:220]) and fp.crop_mask.shape == (150, 180)
    with pytest.raises(RegionError, match="mask is"):
        focal_prompt(image, mask[:100])


def test_focal_pixels_channels_and_normalisation():
    image = np.full((H, W, 3), 255, np.uint8)
    image[..., 1] = 0
    fp = focal_prompt(image, region_to_mask((H, W), box=(100, 60, 160, 110)))
    px = focal_pixels(fp, size=32)
    assert px.shape == (8, 32, 32)
    # mean = std = 0.5: 255 -> +1, 0 -> -1, for the full image and for the crop
    assert float(px[0].min()) == pytest.approx(1.0) and float(px[1].max()) == pytest.approx(-1.0)
    assert float(px[4].min()) == pytest.approx(1.0) and float(px[5].max()) == pytest.approx(-1.0)
    # the crop mask is the crop's middle third (+1 inside, -1 in the corners); the full mask is smaller
    assert px[7, 16, 16] == pytest.approx(1.0) and px[7, 0, 0] == pytest.approx(-1.0)
    assert (px[3] > 0).sum() < (px[7] > 0).sum()


def test_without_focal_crop_the_crop_is_the_whole_image_and_the_mask_is_still_checked():
    img = np.zeros((H, W, 3), np.uint8)
    p = focal_prompt(img, region_to_mask((H, W), box=(100, 50, 120, 70)), crop=False)
    assert _edges(p.crop) == (0, 0, W, H) and p.crop_image.shape == (H, W, 3) and p.crop_mask.sum() == 400
    with pytest.raises(RegionError, match="empty"):
        focal_prompt(img, np.zeros((H, W), bool), crop=False)


def test_square_crop_stays_centred_and_pads_past_the_border():
    """``mode="square"``: a square of 3x the box's longer side (after the 48-px minimum) centred on the box; past
    the image's border the crop is grey (`PAD_VALUE`) and outside the mask. By hand, in the 300 x 200 image."""
    from groundscope.describe.focal import PAD_VALUE

    def square(box):
        return focal_crop(region_to_mask((H, W), box=box), mode="square")

    # inside the image: box 60 x 50 at (100, 60) -> side 180 around its centre (130, 85)
    assert _edges(square((100, 60, 160, 110))) == (40, -5, 220, 175)
    # a box in the top-left corner: the crop reaches past both borders, the box still at its centre
    c = square((0, 0, 20, 30))  # 20 x 30 -> 48 x 48 around (10, 15): side 144
    assert _edges(c) == (10 - 72, 15 - 72, 10 + 72, 15 + 72) and c.width == c.height == 144
    # the reference's clamped crop of the same box: not square, the box off its centre
    assert _edges(_crop((0, 0, 20, 30))) == (0, 0, 82, 87)
    with pytest.raises(ValueError, match="crop mode"):
        focal_crop(region_to_mask((H, W), box=(0, 0, 20, 30)), mode="pad")

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = region_to_mask((H, W), box=(0, 0, 20, 30))
    fp = focal_prompt(image, mask, mode="square")
    assert fp.crop_image.shape == (144, 144, 3) and fp.crop_mask.shape == (144, 144)
    # crop pixel (r, c) is image pixel (r - 57, c - 62); rows above 57 and columns left of 62 are padding
    assert np.array_equal(fp.crop_image[57:, 62:], image[:144 - 57, :144 - 62])
    assert (fp.crop_image[:57] == PAD_VALUE).all() and (fp.crop_image[:, :62] == PAD_VALUE).all()
    assert np.array_equal(fp.crop_mask[57:, 62:], mask[:87, :82]) and not fp.crop_mask[:57].any()
    assert fp.crop_mask.sum() == mask.sum()  # the whole region is inside the crop
    # an inner region's square crop is a plain slice of the image
    inner = focal_prompt(image, region_to_mask((H, W), box=(120, 80, 160, 110)), mode="square")
    c = inner.crop
    assert c.x0 >= 0 and c.y0 >= 0 and np.array_equal(inner.crop_image, image[c.y0:c.y1, c.x0:c.x1])
