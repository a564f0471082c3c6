"""One image file -> the pixels a model takes: the single definition, from training to serving.

Real folders of images contain greyscale scans, palette PNGs, RGBA screenshots, CMYK JPEGs, 16-bit TIFFs,
phone photos stored sideways with an EXIF rotation, zero-byte files, truncated downloads, placeholder GIFs
and `.DS_Store`. Everything that is a usable picture becomes an upright 8-bit RGB image (`read_rgb`);
everything else raises `UnreadableImage` with a short reason, so the caller can skip it and name it.

From there the geometry: the centred square of the image resized to `resize_to` (`load_square`, what the
caches keep and training augments from), then its centre `image_size` crop (`load_pixels`), as float RGB in
[0, 1] for an exported model (`load_input`). Training, evaluation, `predict`, the probe and export's check
all go through these functions, and `export` ships this very file beside the model it writes, so a serving
side runs the same code. That is why this module needs nothing but Pillow and numpy: keep it that way (a
test runs the shipped copy without headstart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The formats torchvision's ImageFolder accepts. GIFs are left out on purpose: in class folders they are
# placeholders and animations (the hymenoptera data ships an `imageNotFound.gif`), not training photos.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# The decoders a file may reach, whatever its name says (Pillow picks one by the file's first bytes): the formats
# above, and GIF for a file handed to `predict` by name. Pillow knows some forty more, and some are not safe on
# files from strangers: an EPS or PostScript file is rendered by running Ghostscript on it, a program with a long
# record of exploits. A picture in a format outside this list is refused, never decoded.
DECODED_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "DIB", "TIFF", "WEBP", "GIF")
DECODED_FORMAT_NAMES = "JPEG, PNG, TIFF, WebP, BMP, PPM/PGM or GIF"  # the same, as people name them

# Pillow's own guard against decompression bombs is a warning up to 2x this many pixels; we make any image
# larger than this an error, so a 50,000 x 50,000 PNG cannot take the machine's memory.
MAX_IMAGE_PIXELS = 89_478_485


class UnreadableImage(Exception):
    """The file is not a usable image: `reason` says why in a few words, `path` which file it was.

    The message is the reason alone, because every caller already prints the path beside it (the skip list,
    predict's rows, `check`); code that only holds the exception finds the file in `path`.
    """

    def __init__(self, reason: str, path: Path | str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else Path(path)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_rgb(path: Path | str, min_size: int | None = None) -> Image.Image:
    """Decode `path` fully into an upright 8-bit RGB image, or raise UnreadableImage naming it.

    With `min_size`, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling via `draft`) as long as
    both sides stay at least `min_size`: a 4000 px photo headed for 256 px decodes several times faster.

    Safe to call from many threads at once (the caches decode with a thread pool): it changes no global state,
    not even the warning filters, which `warnings.catch_warnings` would swap under the other threads' feet.
    """
    path = Path(path)
    try:
        return _decode_rgb(path, min_size)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"too many pixels (a decompression bomb?): {e}", path) from e
    except Image.UnidentifiedImageError as e:
        raise UnreadableImage(f"not a {DECODED_FORMAT_NAMES} image", path) from e
    # truncated data, broken headers, bad EXIF; and Pillow's warnings about them (corrupt EXIF, a bomb between
    # 1x and 2x Pillow's limit) when the warning filters make warnings errors (`python -W error`, pytest)
    except (OSError, SyntaxError, ValueError, Warning) as e:
        raise UnreadableImage(f"cannot decode: {e}", path) from e


def open_image(path: Path | str) -> Image.Image:
    """Pillow's lazy image (header read, no pixels yet), if the file is in one of DECODED_FORMATS: the only way
    headstart opens an image file."""
    return Image.open(path, formats=DECODED_FORMATS)


def _decode_rgb(path: Path, min_size: int | None) -> Image.Image:
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file (0 bytes)", path)
    with open_image(path) as img:
        # Our own limit, from the header alone, before any pixel is decoded: Pillow only warns between 1x and 2x
        # its limit (the warning is printed, then this refuses the file), and a program may have lifted Pillow's
        # limit (Image.MAX_IMAGE_PIXELS = None) for its own reasons.
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise UnreadableImage(
                f"{img.width}x{img.height} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit "
                "(a decompression bomb?)", path,
            )
        if min_size and img.format == "JPEG":
            scale = min(img.width, img.height) / min_size
            if scale >= 2:
                img.draft("RGB", (img.width // int(scale), img.height // int(scale)))
        img.load()  # decode now: truncated files fail here, not later inside a DataLoader worker
        return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without the usual pitfalls.

    16- and 32-bit greyscale ('I;16', 'I') would be clipped at 255 by `convert('RGB')` and come out white,
    so they are rescaled by their bit depth first (32-bit values outside 16 bits, or negative, by their own
    range). Float images ('F') are stretched over the range of their finite values: NaN and infinities would
    otherwise turn the whole image into garbage. Transparent images are composited on white, which is what
    a person sees in a viewer, instead of on the black that a plain conversion gives.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _unit_grey_to_rgb(_integer_grey_to_unit(np.asarray(img, dtype=np.float64), img.mode))
    if img.mode == "F":
        return _unit_grey_to_rgb(_stretch_to_unit(np.asarray(img, dtype=np.float64)))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _integer_grey_to_unit(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit modes by their bit depth; 32-bit 'I' by the depth its values fit (8 or 16 bits), else its range."""
    if mode.startswith("I;16"):
        return arr / 65535.0
    if arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr / (65535.0 if arr.max() > 255 else 255.0)
    return _stretch_to_unit(arr)


def _stretch_to_unit(arr: np.ndarray) -> np.ndarray:
    """Map the finite values' range onto [0, 1]; NaN goes to 0, infinities to the ends."""
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    return (arr - lo) / (hi - lo or 1.0)


def _unit_grey_to_rgb(unit: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


# -------------------------------------------------------------------------------------- the geometry
# Pillow's filters by the names timm's pretrained configs use; any other name falls back to bicubic.
RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def square_pixels(img: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """The centred square of `img` resized to `size` x `size`: H x W x 3 uint8 (timm's eval resize of the shorter
    side, before its centre crop). The square is cut from the source first and only it is resized, so a
    1 x 30,000 strip costs what a 1 x 1 image does; `reducing_gap` lets Pillow shrink a large image by a whole
    factor first (a box filter), as its thumbnails do, which is faster and, at 3, indistinguishable."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((size, size), RESAMPLING.get(interpolation, Image.BICUBIC),
                     box=(left, top, left + side, top + side), reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_square(path: Path | str, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """A file -> its upright RGB centred square at `size` (uint8 H x W x 3), or UnreadableImage.

    JPEGs at least twice `size` are decoded at a reduced DCT scale (1/2, 1/4 or 1/8, never below `size`):
    a 4032 x 3024 photo decodes ~3x faster, and the stored pixels move by half a grey level on average
    (bench/results/decode.json). Every path uses this one function, so they all see those same pixels."""
    return square_pixels(read_rgb(path, min_size=size), size, interpolation)


def centre_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top and left of the centred `size` crop, rounded as torchvision's `center_crop` rounds them (half to
    even), so a crop of a numpy array here and of a tensor batch in training cut the same pixels."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centred `size` x `size` crop of an H x W x C array (the square is at least `size`)."""
    top, left = centre_offsets(pixels.shape[0], pixels.shape[1], size)
    return pixels[top : top + size, left : left + size]


def load_pixels(path: Path | str, resize_to: int, image_size: int, interpolation: str = "bicubic") -> np.ndarray:
    """A file -> the model's input pixels: uint8 image_size x image_size x 3 RGB (before normalisation)."""
    return centre_crop(load_square(path, resize_to, interpolation), image_size)


def load_input(path: Path | str, resize_to: int, image_size: int, interpolation: str = "bicubic") -> np.ndarray:
    """A file -> what an exported model takes: float32 3 x image_size x image_size, RGB in [0, 1]. The arguments
    are the sidecar's `input.recipe`; stack the results of several files for a batch."""
    pixels = load_pixels(path, resize_to, image_size, interpolation)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
