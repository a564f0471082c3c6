"""One image path from file to model input: every way headstart (or a server with only the export) turns a file
into logits gives the same logits, for every kind of file a real folder holds.

The reference is the library's own definition, `images.load_pixels(path, **pre.recipe())`, through the model;
each test runs one path: training's validation decode, `evaluate`, `predict`, the probe's features, export's
check, and the exported ONNX file fed by the code the export ships. The run is trained at 27 px, whose store
(30 px) is an odd 3 px wider than the crop, so a crop rounded differently anywhere shows up as a mismatch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import center_crop

from headstart.analysis.probe import stage_features
from headstart.api import export, predict, train
from headstart.cache import decode_images
from headstart.data import load_class_folders
from headstart.evaluate import evaluate_model
from headstart.export import parity_inputs, preprocess_as_sidecar_says
from headstart.images import centre_crop, load_input, load_pixels, read_rgb
from headstart.runs import load_run
from headstart.train import Split, TrainConfig, eval_loader, predict_batches
from headstart.transforms import normalize_batch

from conftest import make_folder
from helpers import TINY

IMAGE_SIZE = 27  # store floor(27 / 0.875) = 30: an odd margin of 3 px around the centre crop
TOLERANCE = 1e-4  # float32 logits of the same pixels through another order of operations or another runtime
pytestmark = pytest.mark.timeout(1800)  # the module trains a run and exports it to ONNX once: minutes on a busy 2-core box


def picture(w: int, h: int) -> np.ndarray:
    """Smooth colours plus a bright block in the top-left corner: a rotation, a flip or an off-by-one crop
    changes the pixels a model sees."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * xx / w, 255 * yy / h, 128 + 0 * xx], axis=-1)
    rgb[: h // 4, : w // 4] = 250
    return rgb.astype(np.uint8)


def write_every_kind(folder) -> dict[str, object]:
    """One tiny file of each kind that needs care on the way to RGB; returns kind -> path."""
    folder.mkdir(parents=True)
    paths = {}

    # a phone photo stored sideways: pixels landscape, EXIF says rotate; large enough (72 px >= 2 x 30) that the
    # JPEG is decoded at reduced DCT scale
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    paths["exif_rotated"] = folder / "exif_rotated.jpg"
    Image.fromarray(picture(96, 72)).save(paths["exif_rotated"], quality=95, exif=exif)

    rgba = np.dstack([picture(40, 34), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (34, 1))])
    paths["rgba"] = folder / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])

    palette = Image.fromarray(picture(38, 32)).quantize(16)
    paths["palette_transparent"] = folder / "palette_transparent.png"
    palette.save(paths["palette_transparent"], transparency=int(np.asarray(palette)[0, 0]))  # the corner block

    paths["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(picture(40, 36)).convert("CMYK").save(paths["cmyk"], quality=95)

    ramp = (np.linspace(0, 65535, 36 * 40).reshape(36, 40)).astype(np.uint16)
    paths["sixteen_bit"] = folder / "sixteen_bit.png"
    Image.fromarray(ramp).save(paths["sixteen_bit"])

    paths["greyscale"] = folder / "greyscale.png"
    Image.fromarray(picture(33, 40)).convert("L").save(paths["greyscale"])
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny run trained at 27 px, its ONNX export checked on the files of every kind, and those files."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("imagepath")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        make_folder(root / "data" / "train", n=4, seed=1)
        make_folder(root / "data" / "val", n=2, seed=2)
        kinds = write_every_kind(root / "kinds" / "red")
        train(root / "data", TrainConfig(model=TINY, strategy="partial", epochs=1, image_size=IMAGE_SIZE,
                                         num_workers=0, use_cache=False), root / "run")
        sidecar = export(root / "run", images=[root / "kinds"])
        model, config = load_run(root / "run")
        model.eval()
        files = list(kinds.values())
        pixels = torch.from_numpy(np.stack([load_pixels(f, **model.preprocessing.recipe()) for f in files]))
        with torch.no_grad():
            reference = model(normalize_batch(pixels.permute(0, 3, 1, 2), model.preprocessing))
        yield {"root": root, "kinds": kinds, "files": files, "model": model, "classes": config["classes"],
               "sidecar": sidecar, "pixels": pixels, "reference": reference}


def assert_same_logits(setup, logits, path_name: str) -> None:
    differences = (torch.as_tensor(np.asarray(logits)) - setup["reference"]).abs().amax(1)
    wrong = {kind: f"{d:.1e}" for kind, d in zip(setup["kinds"], differences.tolist()) if not d <= TOLERANCE}
    assert not wrong, f"{path_name} disagrees with images.load_pixels on {wrong}"


def test_the_files_are_the_kinds_they_claim(setup):
    """Pillow opens each test file in the mode it stands for (else a test below would prove less than it says)."""
    modes = {kind: Image.open(path).mode for kind, path in setup["kinds"].items()}
    assert modes["rgba"] == "RGBA" and modes["palette_transparent"] == "P" and modes["cmyk"] == "CMYK"
    assert modes["sixteen_bit"].startswith("I") and modes["greyscale"] == "L"
    with Image.open(setup["kinds"]["exif_rotated"]) as img:
        assert img.getexif()[0x0112] == 6 and img.size == (96, 72)


def test_the_input_is_the_picture_a_viewer_shows(setup):
    """Upright (the bright corner block ends up top-right after the EXIF rotation), transparency on white."""
    pre = setup["model"].preprocessing
    upright = load_pixels(setup["kinds"]["exif_rotated"], **pre.recipe()).astype(int)
    assert upright[1, -2].min() > 215 and upright[1, 1].min() < 200  # corner block: top-right now, not top-left
    rgba = load_pixels(setup["kinds"]["rgba"], **pre.recipe()).astype(int)
    assert rgba[:, 0].min() > 215  # the transparent left edge is white (the resize blends in its neighbour), not black
    palette = load_pixels(setup["kinds"]["palette_transparent"], **pre.recipe())
    assert palette[0, 0].tolist() == [255, 255, 255]  # the transparent palette entry is white


def test_training_validation_sees_the_same_input(setup):
    images, _ = load_class_folders(setup["root"] / "kinds")
    model, pre = setup["model"], setup["model"].preprocessing
    decoded = decode_images(images, pre, use_cache=False)
    assert len(decoded.kept) == len(setup["files"])
    split = Split(decoded.pixels, torch.zeros(len(decoded.kept), dtype=torch.long))
    logits, _ = predict_batches(model, eval_loader(split, pre, torch.device("cpu")), 0, pre, torch.device("cpu"))
    by_kind = {images.refs[i]: row for i, row in zip(decoded.kept, logits)}
    assert_same_logits(setup, torch.stack([by_kind[str(f)] for f in setup["files"]]), "training's validation")


def test_evaluate_sees_the_same_input(setup):
    images, _ = load_class_folders(setup["root"] / "kinds")
    logits, _, kept = evaluate_model(setup["model"], images, use_cache=False)
    by_kind = {images.refs[i]: row for i, row in zip(kept, logits)}
    assert_same_logits(setup, torch.stack([by_kind[str(f)] for f in setup["files"]]), "evaluate")


def test_predict_gives_the_same_probabilities(setup):
    rows = predict(setup["root"] / "run", setup["files"], top_k=len(setup["classes"]))
    probabilities = np.array([[next(t["probability"] for t in r["top_k"] if t["label"] == c)
                               for c in setup["classes"]] for r in rows])
    np.testing.assert_allclose(probabilities, setup["reference"].softmax(1).numpy(), atol=1e-5)


def test_the_probe_sees_the_same_features(setup):
    images, _ = load_class_folders(setup["root"] / "kinds")
    model, pre = setup["model"], setup["model"].preprocessing
    decoded = decode_images(images, pre, use_cache=False)
    order = [decoded.kept.index(images.refs.index(str(f))) for f in setup["files"]]
    probed = stage_features(model, decoded.pixels, pre)[-1][order]
    with torch.no_grad():
        last = model.forward_stages(normalize_batch(setup["pixels"].permute(0, 3, 1, 2), pre))[-1]
    torch.testing.assert_close(probed, model.head.features(last), atol=TOLERANCE, rtol=0)


def test_exports_check_runs_on_the_same_input(setup):
    pre = setup["model"].preprocessing
    batch, sources = parity_inputs(pre, setup["files"])
    assert sources == [str(f) for f in setup["files"]]
    assert torch.equal(batch, setup["pixels"].permute(0, 3, 1, 2).float() / 255)
    check = setup["sidecar"]["check"]
    assert check["n"] == len(setup["files"]) and check["max_logit_difference"] <= TOLERANCE


def test_the_exported_file_fed_by_the_shipped_code_gives_the_same_logits(setup):
    import onnxruntime as ort

    batch = preprocess_as_sidecar_says(setup["files"], setup["sidecar"]["sidecar"])
    session = ort.InferenceSession(setup["sidecar"]["path"], providers=["CPUExecutionProvider"])
    assert_same_logits(setup, session.run(["logits"], {"images": batch})[0], "the exported ONNX file")


SERVE_WITHOUT_HEADSTART = """
import json, runpy, sys
import numpy as np
code, sidecar, image = sys.argv[1:]
spec = json.load(open(sidecar))["input"]
x = runpy.run_path(code)[spec["recipe_code"]["function"]](image, **spec["recipe"])
assert not any(name.startswith("headstart") for name in sys.modules), "the shipped code imported headstart"
sys.stdout.write(json.dumps(x.tolist()))
"""


def test_the_shipped_code_is_the_librarys_and_runs_without_headstart(setup):
    shipped = setup["sidecar"]["recipe_code"]
    with open(shipped) as f:
        assert f.read() == open(sys.modules[load_input.__module__].__file__).read()  # images.py itself
    image = setup["kinds"]["exif_rotated"]
    out = subprocess.run([sys.executable, "-I", "-c", SERVE_WITHOUT_HEADSTART, shipped, setup["sidecar"]["sidecar"],
                          str(image)], capture_output=True, text=True, check=True, cwd=setup["root"])
    served = np.array(json.loads(out.stdout), dtype=np.float32)
    np.testing.assert_array_equal(served, load_input(image, **setup["model"].preprocessing.recipe()))


@pytest.mark.parametrize("side, size", [(30, 27), (31, 27), (36, 32), (33, 32), (7, 4), (8, 8)])
def test_the_numpy_crop_cuts_what_torchvisions_crop_cuts(side, size):
    """Batches are cropped by torchvision, single files by `images.centre_crop`: odd margins round alike."""
    pixels = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    torch_crop = center_crop(torch.from_numpy(pixels).permute(2, 0, 1), [size, size]).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(centre_crop(pixels, size), torch_crop)


def test_reduced_scale_decoding_is_part_of_the_one_definition(tmp_path):
    """A large JPEG is decoded at reduced DCT scale for its store: `load_pixels` (predict, export, the shipped
    code) does the same as the caches, so the saving never makes serving differ from training."""
    path = tmp_path / "big.jpg"
    Image.fromarray(picture(160, 120)).save(path, quality=90)
    full = np.asarray(read_rgb(path))
    reduced = np.asarray(read_rgb(path, min_size=30))
    assert full.shape[:2] == (120, 160) and reduced.shape[:2] == (30, 40)  # the 1/4 scale: never below 30
    recipe = {"resize_to": 30, "image_size": 27, "interpolation": "bicubic"}
    from headstart.images import square_pixels

    assert np.array_equal(load_pixels(path, **recipe), centre_crop(square_pixels(Image.fromarray(reduced), 30), 27))
