"""Reading one image file into an RGB PIL image, whatever the file holds.

Real folders of images contain greyscale scans, palette PNGs, RGBA screenshots, CMYK JPEGs, 16-bit TIFFs,
phone photos stored sideways with an EXIF rotation, zero-byte files, truncated downloads, placeholder GIFs
and `.DS_Store`. Everything that is a usable picture becomes an upright 8-bit RGB image; everything else
raises `UnreadableImage` with a short reason, so the caller can skip it and name it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The formats torchvision's ImageFolder accepts. GIFs are left out on purpose: in class folders they are
# placeholders and animations (the hymenoptera data ships an `imageNotFound.gif`), not training photos.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Pillow's own guard against decompression bombs is a warning up to 2x this many pixels; we make any image
# larger than this an error, so a 50,000 x 50,000 PNG cannot take the machine's memory.
MAX_IMAGE_PIXELS = 89_478_485


class UnreadableImage(Exception):
    """The file is not a usable image; the message says why in a few words."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_rgb(path: Path | str, min_size: int | None = None) -> Image.Image:
    """Decode `path` fully into an upright 8-bit RGB image, or raise UnreadableImage.

    With `min_size`, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling via `draft`) as long as
    both sides stay at least `min_size`: a 4000 px photo headed for 256 px decodes several times faster.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise UnreadableImage(
                        f"{img.width}x{img.height} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit "
                        "(a decompression bomb?)"
                    )
                if min_size and img.format == "JPEG":
                    scale = min(img.width, img.height) / min_size
                    if scale >= 2:
                        img.draft("RGB", (img.width // int(scale), img.height // int(scale)))
                img.load()  # decode now: truncated files fail here, not later inside a DataLoader worker
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"too many pixels (a decompression bomb?): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise UnreadableImage("not an image Pillow can identify") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken headers, bad EXIF
        raise UnreadableImage(f"cannot decode: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without the usual pitfalls.

    16- and 32-bit greyscale ('I;16', 'I') would be clipped at 255 by `convert('RGB')` and come out white,
    so they are rescaled by their bit depth first. Transparent images are composited on white, which is
    what a person sees in a viewer, instead of on the black that a plain conversion gives.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
