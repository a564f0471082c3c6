"""Every kind of file a real class folder holds becomes upright 8-bit RGB, or a clear UnreadableImage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from headstart.images import UnreadableImage, is_image_file, read_rgb


def save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    out = read_rgb(save(img, tmp_path / f"x.{ext}"))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_greyscale_keeps_its_range(tmp_path):
    """A plain convert('RGB') clips 16-bit values at 255 (all white); we rescale by bit depth."""
    ramp = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    path = save(Image.fromarray(ramp), tmp_path / "deep.png")
    out = np.asarray(read_rgb(path))
    assert out.min() < 10 and out.max() > 245 and 100 < out.mean() < 155


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(read_rgb(save(img, tmp_path / "t.png")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone photo held upright
    path = save(img, tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_rgb(path).size == (10, 30)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(UnreadableImage, match="empty"):
        read_rgb(path)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnreadableImage):
        read_rgb(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(UnreadableImage, match="not a JPEG, PNG"):
        read_rgb(path)


def test_a_postscript_file_named_jpg_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    # Pillow picks its decoder by a file's first bytes, and its EPS decoder runs Ghostscript on the file
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was run on a file from a class folder")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    path = save(Image.new("RGB", (16, 16), (10, 200, 30)), tmp_path / "photo.jpg", format="EPS")
    assert path.read_bytes().startswith(b"%!PS")
    with pytest.raises(UnreadableImage, match="not a JPEG, PNG"):
        read_rgb(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import headstart.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)
    path = save(Image.new("L", (200, 200)), tmp_path / "bomb.png")
    with pytest.raises(UnreadableImage, match="pixel limit"):
        read_rgb(path)


def test_which_files_count_as_images(tmp_path):
    assert is_image_file(tmp_path / "a.JPG") and is_image_file(tmp_path / "b.webp")
    assert not is_image_file(tmp_path / "imageNotFound.gif")
    assert not is_image_file(tmp_path / ".DS_Store") and not is_image_file(tmp_path / "labels.txt")


def test_an_unreadable_image_names_its_file(tmp_path):
    """Callers that hold only the exception (a thread pool's future, a DataLoader worker) can still name the file."""
    path = tmp_path / "not a photo.jpg"
    path.write_text("not an image")
    with pytest.raises(UnreadableImage) as refused:
        read_rgb(str(path))
    assert refused.value.path == path and str(refused.value) == refused.value.reason


def test_reading_leaves_warning_filters_another_thread_sets_meanwhile(tmp_path, monkeypatch):
    """The caches decode with a thread pool: swapping the global warning filters for the length of one decode
    (warnings.catch_warnings) undid filters that other threads set meanwhile, and left its own behind."""
    import threading
    import warnings

    class Marker(UserWarning):
        pass

    path = save(Image.new("RGB", (8, 8)), tmp_path / "x.png")
    real_open = Image.open

    def open_while_another_thread_sets_a_filter(*args, **kwargs):
        other = threading.Thread(target=warnings.simplefilter, args=("ignore", Marker))
        other.start()
        other.join()
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_while_another_thread_sets_a_filter)
    with warnings.catch_warnings():  # this test's own sandbox, restored when it ends
        before = list(warnings.filters)
        read_rgb(path)
        assert warnings.filters == [("ignore", None, Marker, None, 0)] + before


@pytest.mark.filterwarnings("error")
def test_warnings_as_errors_still_give_unreadable_image(tmp_path):
    """Under `python -W error` Pillow's complaint about a cut-short TIFF is raised as a UserWarning."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "TIFF")
    path = tmp_path / "cut.tif"
    path.write_bytes(buf.getvalue()[:20])  # the tag directory, right after the 8-byte header, is cut off
    with pytest.raises(UnreadableImage, match="cannot decode"):
        read_rgb(path)


@pytest.mark.filterwarnings("error")  # numpy's "invalid value encountered in cast" would be the old failure
def test_float_images_with_nan_and_infinity_keep_their_finite_ramp(tmp_path):
    values = np.array([[np.nan, 0.0, 0.5, 1.0, np.inf, -np.inf]], dtype=np.float32)
    out = np.asarray(read_rgb(save(Image.fromarray(values), tmp_path / "f.tif")))
    assert out[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


@pytest.mark.parametrize("low, high", [(0, 1_000_000), (-1000, 1000)])
def test_32_bit_greyscale_beyond_16_bits_or_negative_keeps_its_contrast(tmp_path, low, high):
    """Plain 16-bit scaling clipped these to all white (beyond 16 bits) or all black (negative)."""
    ramp = np.linspace(low, high, 64).reshape(8, 8).astype(np.int32)
    out = np.asarray(read_rgb(save(Image.fromarray(ramp), tmp_path / "deep.tif")))
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155
