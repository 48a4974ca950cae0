"""Image loading: every common mode becomes correct RGB, EXIF orientation is applied, bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from groundscope.images import ImageLoadError, load_image, resized_size


def test_modes_convert_to_rgb(tmp_path):
    grey = Image.new("L", (4, 3), 100)
    assert load_image(grey).getpixel((0, 0)) == (100, 100, 100)
    la = Image.new("LA", (4, 3), (0, 0))  # fully transparent black -> the white background
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 128))  # half red over white
    r, g, b = load_image(rgba).getpixel((0, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    pal = Image.new("RGB", (4, 3), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_image(pal).getpixel((0, 0)) == (10, 200, 30)
    pal.info["transparency"] = pal.getpixel((0, 0))  # a transparent palette entry -> white background
    assert load_image(pal).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    assert load_image(cmyk).getpixel((0, 0)) == (255, 0, 0)
    i16 = Image.fromarray(np.full((3, 4), 65535, np.uint16))
    assert load_image(i16).getpixel((0, 0)) == (255, 255, 255)
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 4), 32768, np.uint16)).save(path)  # 16-bit PNG on disk
    assert load_image(path).getpixel((0, 0))[0] in (127, 128)


def test_arrays():
    assert load_image(np.zeros((5, 6, 3), np.uint8)).size == (6, 5)
    assert load_image(np.ones((3, 5, 6), np.float32)).getpixel((0, 0)) == (255, 255, 255)  # CHW float
    assert load_image(np.full((5, 6), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageLoadError, match="array shape"):
        load_image(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((5, 6, 3), 2.0))


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 2))  # the left strip ends up on top
    assert b > 200 and r < 60


def test_bad_files_name_themselves(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="nope.jpg.*no such file"):
        load_image(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="garbage.png"):
        load_image(garbage)
    truncated = tmp_path / "trunc.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    truncated.write_bytes((tmp_path / "ok.jpg").read_bytes()[:100])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_bad_files_say_what_they_hold_and_the_fix_without_object_reprs(tmp_path):
    cases = {
        "empty.jpg": (b"", "empty \\(0 bytes\\); re-export"),
        "notes.png": (b"hello, not pixels", "holds text, starting 'hello, not pixels'.*convert it to PNG or JPEG"),
        "blob.png": (bytes(range(40)), "40 bytes starting 00 01 02.*convert it to PNG or JPEG"),
    }
    for name, (data, pattern) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageLoadError, match=pattern) as info:
            load_image(tmp_path / name)
        assert "object at 0x" not in str(info.value) and "BytesIO" not in str(info.value)
    Image.new("RGB", (300, 300), (9, 8, 7)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:120])
    with pytest.raises(ImageLoadError, match="cut.png.*truncated.*re-download"):
        load_image(tmp_path / "cut.png")


def test_decompression_bomb_is_refused_with_its_name(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 Mpx, a few hundred kB on disk
    with pytest.raises(ImageLoadError, match="bomb.png.*(pixel limit|decompression bomb)"):
        load_image(bomb)


@pytest.mark.parametrize(
    "hw,expected",
    [((480, 640), (800, 1066)), ((640, 480), (1066, 800)), ((800, 1333), (800, 1333)), ((100, 1000), (133, 1333)),
     ((1000, 100), (1333, 133)), ((800, 800), (800, 800))],
)
def test_resized_size(hw, expected):
    assert resized_size(*hw) == expected
