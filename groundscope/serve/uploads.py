"""Uploaded bytes -> the RGB image the CLI would have read from the same file, or an `ImageLoadError`.

`groundscope.images.load_image` reads paths, PIL images and arrays. An upload arrives as bytes, so this module
opens them exactly as `load_image` opens a file's bytes (same decompression-bomb guard, full decode so a
truncated file fails here and not inside the model) and then hands the PIL image to `load_image` for the EXIF
rotation and RGB conversion. Identical bytes therefore give identical pixels, and identical detections.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from groundscope.images import MAX_PIXELS, ImageLoadError, load_image


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode an uploaded file named `name` (for messages) into an 8-bit RGB PIL image.

    Raises:
        ImageLoadError: empty, not an image, truncated/corrupt, or over the pixel limit; the message names
            the upload and the reason.
    """
    if not data:
        raise ImageLoadError(name, "the upload is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise ImageLoadError(name, f"{im.size[0]}x{im.size[1]} pixels exceeds the {MAX_PIXELS:,}-pixel limit")
            im.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        head = data[:8].hex(" ")
        raise ImageLoadError(
            name, f"not an image format PIL can read (first bytes {head}); send a JPEG, PNG, WebP, BMP, GIF or TIFF"
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(name, f"too large (decompression bomb guard): {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(name, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    try:
        return load_image(im)  # EXIF rotation and RGB conversion, exactly as for a file
    except ImageLoadError as e:  # re-raised under the upload's name instead of "<PIL ...>"
        reason = f"{type(e.__cause__).__name__}: {e.__cause__}" if e.__cause__ is not None else str(e)
        raise ImageLoadError(name, reason) from e
