"""Image loading and the Grounding DINO preprocessing.

`load_image` turns a path, PIL image or numpy array into an 8-bit RGB PIL image (EXIF orientation applied,
palette/alpha/CMYK/16-bit converted) or raises `ImageLoadError` naming the source.

`preprocess` reproduces transformers' ``GroundingDinoImageProcessor`` pipeline (shortest edge 800, longest edge
1333, bilinear resize on the uint8 image, rescale 1/255, ImageNet mean/std). We own it instead of calling the
processor because the default (torchvision) backend cannot load on our CPU torch build, and because we need the
per-image tensors unpadded so images of equal size can be batched without padding artefacts.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHORTEST_EDGE = 800
LONGEST_EDGE = 1333

# PIL's own bomb guard warns at 89 Mpx and errors at 2x that; we make the warning an error too, so a
# hostile or broken file fails with its name instead of exhausting memory.
MAX_PIXELS = 178_956_970


class ImageLoadError(ValueError):
    """An image could not be read; the message names the source and the reason."""

    def __init__(self, source: Any, reason: str):
        self.source = source
        super().__init__(f"cannot read image {describe_source(source)}: {reason}")


def describe_source(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return f"'{source}'"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def source_name(source: Any, index: int) -> str:
    """A short name for a source, used for output file stems and result records."""
    if isinstance(source, (str, Path)):
        return str(source)
    return f"image_{index}"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the way a person expects (alpha composited on white)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the full range to 8 bits instead of clipping at 255.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode == "CMYK":
        # PIL's CMYK->RGB conversion is the naive one; Adobe JPEGs store inverted CMYK, which PIL already undoes.
        return im.convert("RGB")
    return im.convert("RGB")


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError("float arrays must hold values in [0, 1]")
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    return Image.fromarray(arr)


def _sniff(data: bytes) -> str:
    """A few words on what `data` (a file's bytes) looks like, for an error message: text or binary, and its
    first bytes."""
    head = data[:16]
    try:
        text = data[:256].decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return f"it holds text, starting {text[:24]!r}"
    except UnicodeDecodeError:
        pass
    return f"{len(data):,} bytes starting {head.hex(' ')}"


def load_image(source: ImageInput) -> Image.Image:
    """Load `source` as an RGB PIL image.

    Args:
        source: a path (str or Path), a PIL image, or a numpy array (H, W), (H, W, 3|4) or (3|4, H, W) of
            uint8, uint16 or float in [0, 1].
    Raises:
        ImageLoadError: unreadable, missing, truncated or too large (decompression bomb) input.
    """
    try:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.exists():
                if path.is_symlink():  # exists() follows links: a dangling or looping link is not "missing"
                    raise ImageLoadError(source, "a symbolic link that leads nowhere (dangling, or a loop of "
                                                 "links); point it at an image file or remove it")
                raise ImageLoadError(source, "no such file")
            if path.is_dir():
                raise ImageLoadError(source, "is a directory")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                data = path.read_bytes()
                if not data:
                    raise ImageLoadError(source, "the file is empty (0 bytes); re-export or re-download it")
                try:
                    im = Image.open(io.BytesIO(data))
                except UnidentifiedImageError as e:
                    raise ImageLoadError(source, f"not an image format PIL reads ({_sniff(data)}); convert it to "
                                         "PNG or JPEG") from e
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ImageLoadError(
                        source, f"{im.size[0]}x{im.size[1]} pixels exceeds the {MAX_PIXELS:,}-pixel limit"
                    )
                im.load()
        elif isinstance(source, Image.Image):
            im = source
        elif isinstance(source, np.ndarray):
            im = _array_to_pil(source)
        else:
            raise ImageLoadError(source, "expected a path, PIL.Image or numpy array")
        im = ImageOps.exif_transpose(im) if hasattr(im, "getexif") else im
        return _to_rgb(im)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(source, f"too large (decompression bomb guard): {e}") from e
    except OSError as e:
        if "truncated" in str(e).lower():  # PNG: "image file is truncated"; JPEG: "Truncated File Read"
            raise ImageLoadError(source, "the file is truncated (cut off before the image ends); re-download or "
                                 "re-export it") from e
        raise ImageLoadError(source, f"{type(e).__name__}: {e}") from e
    except (SyntaxError, ValueError) as e:
        raise ImageLoadError(source, f"{type(e).__name__}: {e}") from e


def resized_size(height: int, width: int, shortest: int = SHORTEST_EDGE, longest: int = LONGEST_EDGE) -> tuple[int, int]:
    """Output (height, width) of the aspect-preserving resize, identical to transformers'
    ``get_size_with_aspect_ratio`` (including its int() truncation and round() of the capped edge)."""
    size = shortest
    raw = None
    short_side, long_side = float(min(height, width)), float(max(height, width))
    if long_side / short_side * size > longest:
        raw = longest * short_side / long_side
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        ow = size
        oh = int((raw if raw is not None else size) * height / width)
    else:
        oh = size
        ow = int((raw if raw is not None else size) * width / height)
    return oh, ow


@dataclass
class PreparedImage:
    """One image ready for the model.

    Attributes:
        pixel_values: float32 (3, H', W') normalised tensor at the resized size.
        orig_size: (height, width) of the original image, for mapping boxes back to pixels.
    """

    pixel_values: torch.Tensor
    orig_size: tuple[int, int]


def preprocess(image: Image.Image, shortest: int = SHORTEST_EDGE, longest: int = LONGEST_EDGE) -> PreparedImage:
    """Resize + normalise one RGB image exactly like GroundingDinoImageProcessor (PIL backend)."""
    w, h = image.size
    oh, ow = resized_size(h, w, shortest, longest)
    if (oh, ow) != (h, w):
        image = image.resize((ow, oh), resample=Image.Resampling.BILINEAR)
    # In place: the reference's three float32 operations in its order (so the same bits), without a new array
    # for each. np.array copies, so the caller's image is never written.
    arr = np.array(image, dtype=np.float32)
    arr *= np.float32(1 / 255)
    arr -= np.asarray(IMAGENET_MEAN, np.float32)
    arr /= np.asarray(IMAGENET_STD, np.float32)
    return PreparedImage(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), (h, w))
