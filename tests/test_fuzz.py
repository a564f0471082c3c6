"""Whatever a file holds, reading it gives an upright 8-bit RGB image of the picture's size, or an
`UnreadableImage` that names the file; `predict` answers every file it is given with a prediction or an error.

Property-based (hypothesis): pictures in every mode each format can store, at odd sizes, then cut short,
damaged byte by byte, or replaced by random bytes behind a real format's signature. The examples are
derandomized and no example database is kept, so every run (and CI) tries the same inputs.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

import headstart.images as images
from headstart.api import predict
from headstart.images import UnreadableImage, read_rgb
from headstart.runs import save_checkpoint

from helpers import TINY, tiny_model

# Broken files make Pillow warn about what it skips (TIFF tags, EXIF) and about bombs: expected here, so quiet.
# Tests marked `filterwarnings("error")` instead turn every warning into an error, as `python -W error` does (a
# module-level mark would take precedence over theirs, so this one is put on each test).
PILLOW_COMPLAINS = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")

# tmp_path is shared by the examples of one test on purpose: each example overwrites its own file.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The modes each format can save (Pillow converts some on the way: GIF to P, WebP to RGB(A), JPEG 1 to L).
# "P+t" is a palette image with a transparent index.
SAVEABLE = {
    "JPEG": ["1", "L", "CMYK", "YCbCr", "RGB"],
    "PNG": ["1", "L", "LA", "P", "P+t", "RGBA", "I;16", "RGB"],
    "GIF": ["1", "L", "P", "P+t", "RGBA", "RGB"],
    "WEBP": ["L", "LA", "P", "RGBA", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB", "RGB"],
    "BMP": ["1", "L", "P", "RGB"],
    "PPM": ["1", "L", "I;16", "I", "F", "RGB"],
}
FORMAT_MODES = [(fmt, mode) for fmt, modes in SAVEABLE.items() for mode in modes]
# Largest side each format stores (WebP: 16383).
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500, "GIF": 65535}

# The first bytes by which Pillow recognises a format: random data behind them reaches the format's parser.
SIGNATURES = [
    b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"GIF89a", b"GIF87a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"II*\x00", b"MM\x00*", b"BM", b"P5\n",
    b"P6\n", b"P5\n2 3\n255\n", b"P4\n", b"\x00\x00\x01\x00",
]

sizes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.sampled_from([(1, 1), (1, 300), (300, 1), (3000, 1), (1, 3000), (16000, 2)]),
)


def picture(mode: str, size: tuple[int, int], seed: int) -> tuple[Image.Image, dict]:
    """Random content in `mode` (values across the mode's whole range) and the save options it needs."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)), {}
    if mode == "I":
        return Image.fromarray(rng.integers(-2**20, 2**20, (h, w), dtype=np.int32)), {}
    if mode == "F":
        values = rng.normal(0, 1000, (h, w)).astype(np.float32)
        values.flat[: rng.integers(0, 3)] = rng.choice([np.nan, np.inf, -np.inf])  # a few bad pixels
        return Image.fromarray(values), {}
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P+t":
        return rgba.convert("RGB").convert("P"), {"transparency": 0}
    return (rgba if mode in ("RGBA", "LA", "PA") else rgba.convert("RGB")).convert(mode), {}


def encode(fmt: str, mode: str, size: tuple[int, int], seed: int = 0) -> bytes:
    img, options = picture(mode, size, seed)
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def fits(fmt: str, size: tuple[int, int]) -> bool:
    return max(size) <= MAX_SIDE.get(fmt, 1 << 20)


def read_or_refuse(path: Path, **kwargs) -> Image.Image | None:
    """The contract: an 8-bit RGB image, or an UnreadableImage that names `path`; anything else fails."""
    try:
        img = read_rgb(path, **kwargs)
    except UnreadableImage as e:
        assert e.path == path and str(e), f"{e!r} does not name {path}"
        return None
    pixels = np.asarray(img)
    assert img.mode == "RGB" and pixels.dtype == np.uint8 and pixels.shape == (img.height, img.width, 3)
    return img


def header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


@pytest.mark.filterwarnings("error")  # a sound file decodes without a single warning (NaN pixels included)
@FUZZ
@given(st.sampled_from(FORMAT_MODES), sizes, st.integers(0, 2**16))
def test_every_mode_each_format_stores_reads_as_rgb_of_its_size(tmp_path, format_mode, size, seed):
    fmt, mode = format_mode
    assume(fits(fmt, size))
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(encode(fmt, mode, size, seed))
    img = read_or_refuse(path)
    assert img is not None and img.size == size


@PILLOW_COMPLAINS
@FUZZ
@given(st.sampled_from(FORMAT_MODES), st.integers(1, 40), st.integers(1, 40), st.floats(0, 1, exclude_max=True))
def test_a_file_cut_short_is_refused_by_name_or_still_whole(tmp_path, format_mode, w, h, keep):
    """A download cut anywhere: unreadable, or (when only the trailer is missing) the whole picture."""
    fmt, mode = format_mode
    data = encode(fmt, mode, (w, h))
    path = tmp_path / f"cut short.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    img = read_or_refuse(path)
    assert img is None or img.size == (w, h)


# Where to edit: often in the first 64 bytes, where the headers and tag directories are parsed; else anywhere.
offsets = st.one_of(st.integers(0, 63), st.integers(0, 1 << 20))
edits = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]), offsets,
                           st.binary(min_size=1, max_size=8)), min_size=1, max_size=6)


@PILLOW_COMPLAINS
@settings(FUZZ, max_examples=150)
@given(st.sampled_from(FORMAT_MODES), st.integers(1, 24), st.integers(1, 24), edits)
def test_damaged_bytes_are_refused_by_name_or_read_as_rgb(tmp_path, format_mode, w, h, edits):
    """Overwritten, inserted and deleted bytes anywhere in a real file, headers included; the rest cut off."""
    check_damaged(tmp_path, format_mode, w, h, edits)


@pytest.mark.filterwarnings("error")
@settings(FUZZ, max_examples=60)
@given(st.sampled_from(FORMAT_MODES), st.integers(1, 24), st.integers(1, 24), edits)
def test_damaged_bytes_with_warnings_as_errors_are_still_only_refused(tmp_path, format_mode, w, h, edits):
    """Under `python -W error` Pillow's warnings about broken metadata are raised: still an UnreadableImage."""
    check_damaged(tmp_path, format_mode, w, h, edits)


@PILLOW_COMPLAINS
@settings(FUZZ, max_examples=60)
@given(st.sampled_from(["L", "CMYK", "RGB"]), st.booleans(), edits)
def test_damaged_jpeg_decoded_at_reduced_scale_is_refused_by_name_or_read_as_rgb(tmp_path, mode, progressive, edits):
    """`min_size` takes libjpeg's scaled decoding (`draft`), another path through the decoder."""
    img, _ = picture(mode, (160, 120), seed=0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=progressive)
    path = tmp_path / "damaged.jpg"
    path.write_bytes(damage(buf.getvalue(), edits))
    out = read_or_refuse(path, min_size=32)
    assert out is None or min(out.size) >= min(32, *header_size(path))  # the damage may have changed the size


def check_damaged(tmp_path: Path, format_mode: tuple[str, str], w: int, h: int, edits: list) -> None:
    fmt, mode = format_mode
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(damage(encode(fmt, mode, (w, h)), edits))
    img = read_or_refuse(path)
    if img is not None:
        assert img.size in (header_size(path), header_size(path)[::-1])


def damage(encoded: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(encoded)
    for op, offset, chunk in edits:
        at = offset % (len(data) + 1)
        if op == "set":
            data[at:at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = chunk
        elif op == "delete":
            del data[at:at + len(chunk)]
        else:
            del data[at:]
    return bytes(data)


@PILLOW_COMPLAINS
@settings(FUZZ, max_examples=100)
@given(st.sampled_from(SIGNATURES), st.binary(max_size=600))
def test_random_bytes_behind_a_format_signature_are_refused_by_name(tmp_path, signature, body):
    path = tmp_path / "random.jpg"
    path.write_bytes(signature + body)
    img = read_or_refuse(path)
    if img is not None:  # random bytes can make a valid file (a PGM header and enough pixels)
        assert img.size in (header_size(path), header_size(path)[::-1])


@pytest.mark.filterwarnings("error")
@FUZZ
@given(st.sampled_from(["JPEG", "PNG", "WEBP", "TIFF"]), st.integers(0, 65535), st.integers(1, 40),
       st.integers(1, 40))
def test_any_exif_orientation_gives_an_upright_rgb_image(tmp_path, fmt, orientation, w, h):
    """Orientations 5-8 turn the picture a quarter; every other value (invalid ones too) leaves it as it is."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"oriented.{fmt.lower()}"
    Image.new("RGB", (w, h), (10, 200, 30)).save(path, fmt, exif=exif.tobytes())
    img = read_or_refuse(path)
    assert img is not None and img.size == ((h, w) if 5 <= orientation <= 8 else (w, h))


@st.composite
def exif_with_damage(draw) -> bytes:
    """A valid EXIF block (orientation 6) with a few bytes overwritten: offsets and counts that lie."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = bytearray(exif.tobytes())
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@PILLOW_COMPLAINS
@FUZZ
@given(st.sampled_from(["JPEG", "PNG", "WEBP"]), st.one_of(st.binary(max_size=80), exif_with_damage()))
def test_garbage_exif_is_refused_by_name_or_ignored(tmp_path, fmt, exif):
    """These formats store the EXIF block as it is given: the reader meets it broken."""
    path = tmp_path / f"exif.{fmt.lower()}"
    Image.new("RGB", (12, 7), (10, 200, 30)).save(path, fmt, exif=b"Exif\x00\x00" + exif)
    img = read_or_refuse(path)
    assert img is None or img.size in ((12, 7), (7, 12))


@pytest.mark.filterwarnings("error")
@FUZZ
@given(st.sampled_from(["L", "CMYK", "RGB"]), st.integers(1, 600), st.integers(1, 600), st.integers(1, 300),
       st.sampled_from([1, 6]))
def test_reduced_jpeg_decoding_keeps_both_sides_at_least_min_size(tmp_path, mode, w, h, min_size, orientation):
    """libjpeg's DCT scaling shrinks by 1/2, 1/4, 1/8: never below `min_size` (nor enlarges a small photo)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (w, h), (90, 140, 200)).convert(mode).save(path, exif=exif.tobytes())
    img = read_or_refuse(path, min_size=min_size)
    upright = (w, h) if orientation == 1 else (h, w)
    assert img is not None and min(img.size) >= min(min_size, w, h)
    assert img.size in [(-(-upright[0] // s), -(-upright[1] // s)) for s in (1, 2, 4, 8)]  # whole, 1/2, 1/4, 1/8


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` greyscale pixels and which holds none: a bomb's header."""
    return b"\x89PNG\r\n\x1a\n" + b"".join([
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)),
        png_chunk(b"IDAT", zlib.compress(b"")),
        png_chunk(b"IEND", b""),
    ])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@PILLOW_COMPLAINS
@FUZZ
@given(st.integers(1, 200_000), st.integers(1, 200_000), st.booleans())
def test_a_header_over_the_pixel_limit_is_refused_by_name_before_decoding(tmp_path, monkeypatch, w, h, lift_pillow):
    """Whatever Pillow's own limit is set to (even lifted), headstart refuses over MAX_IMAGE_PIXELS."""
    assume(w * h > images.MAX_IMAGE_PIXELS)
    if lift_pillow:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(w, h))
    with pytest.raises(UnreadableImage, match="pixel") as refused:
        read_rgb(path)
    assert refused.value.path == path


@PILLOW_COMPLAINS
@pytest.mark.parametrize("w, h", [(10_000, 10_000), (20_000, 20_000), (1, 100_000_000)])
def test_real_bomb_headers_are_refused_by_name(tmp_path, w, h):
    """Between Pillow's warning and its error (1x-2x its limit), above both, and one pixel wide."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(w, h))
    with pytest.raises(UnreadableImage, match="pixel") as refused:
        read_rgb(path)
    assert refused.value.path == path


@pytest.mark.filterwarnings("error")
def test_a_large_image_within_the_limit_reads_whole(tmp_path):
    path = tmp_path / "large.png"
    Image.new("L", (6000, 4000), 77).save(path)  # 24 million pixels, a third of the limit
    img = read_or_refuse(path)
    assert img is not None and img.size == (6000, 4000) and img.getpixel((5999, 3999)) == (77, 77, 77)


def test_a_named_pipe_is_refused_at_once_not_waited_on(tmp_path):
    """Opening a FIFO blocks until someone writes to it; a reader must never get there."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert read_or_refuse(path) is None


@pytest.mark.filterwarnings("error")
@FUZZ
@given(st.sampled_from(["PNG", "TIFF", "BMP"]), st.integers(1, 3000), st.integers(0, 3))
def test_sizes_around_the_pixel_limit(tmp_path, monkeypatch, fmt, width, over):
    """With the limit lowered to 3,000 pixels: up to it reads whole, above it is refused by name."""
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 3000)
    height = 3000 // width + over
    path = tmp_path / f"large.{fmt.lower()}"
    path.write_bytes(encode(fmt, "L", (width, height)))
    img = read_or_refuse(path)
    assert (img is None) == (width * height > 3000)
    assert img is None or img.size == (width, height)


# --- predict on a tiny saved run -----------------------------------------------------------------------------

CLASSES = ["blue", "red"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory as training writes it (weights + config), for the 0.36M-parameter test model."""
    model = tiny_model(num_classes=len(CLASSES))
    run_dir = tmp_path_factory.mktemp("run")
    save_checkpoint(run_dir, model.state_dict(),
                    {"model": TINY, "classes": CLASSES, "preprocessing": model.preprocessing.to_dict()})
    return run_dir


files = st.one_of(
    st.tuples(st.just("picture"), st.sampled_from(FORMAT_MODES), sizes, st.floats(0.3, 1.0)),
    st.tuples(st.just("random"), st.sampled_from(SIGNATURES), st.binary(max_size=200)),
)


def write_file(path: Path, spec: tuple) -> None:
    if spec[0] == "random":
        path.write_bytes(spec[1] + spec[2])
        return
    _, (fmt, mode), size, keep = spec
    data = encode(fmt, mode, size if fits(fmt, size) else (7, 5))
    path.write_bytes(data if keep > 0.9 else data[: int(len(data) * keep)])  # some whole, some cut short


@PILLOW_COMPLAINS
@settings(FUZZ, max_examples=8)  # each predict loads the run anew (about a second on 2 busy cores): few calls,
@given(st.lists(files, min_size=1, max_size=10), st.integers(1, 3))  # many files per call
def test_predict_answers_every_file_by_name(tmp_path, tiny_run, specs, top_k):
    """One row per file, in order: top-k labels with probabilities, or an error for an unreadable file."""
    paths = []
    for i, spec in enumerate(specs):
        path = tmp_path / f"{i} odd näme.{'png' if spec[0] == 'random' else spec[1][0].lower()}"
        write_file(path, spec)
        paths.append(path)
    rows = predict(tiny_run, paths, top_k=top_k)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for path, row in zip(paths, rows):
        if read_or_refuse(path) is None:
            assert set(row) == {"path", "error"} and row["error"]
        else:
            assert row["label"] in CLASSES and 0 <= row["probability"] <= 1
            assert len(row["top_k"]) == min(top_k, len(CLASSES))
            assert row["top_k"][0]["label"] == row["label"]
