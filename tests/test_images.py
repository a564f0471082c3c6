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
    with pytest.raises(UnreadableImage, match="identify"):
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
