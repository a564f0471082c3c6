"""A run directory -> one file that serves predictions without headstart: ONNX, or a torch.export program.

The exported graph holds everything between pixels and class scores that must match training exactly:
normalisation with the model's own mean/std, the backbone, the fine-tuned head and a softmax. The way from an
image file to those pixels (decode, EXIF rotation, transparency, colour modes, the resize and the centre crop)
is not a graph: it is headstart's own `images.py`, shipped beside the export as `<file>.preprocess.py` (Pillow
and numpy only). The sidecar `<file>.json` names the classes, that file, its sha256 and the arguments to call
its `load_input` with (`input.recipe`), so a serving side computes exactly the pixels `predict` computes.

    input   images          float32  N x 3 x S x S   RGB in [0, 1], any N
    outputs logits          float32  N x C
            probabilities   float32  N x C           (softmax of the logits)

Every export is loaded back from disk and checked against the PyTorch model on the same inputs (real images
when given, else a fixed random batch): the largest logit difference and the top-1 agreement go into the
sidecar, and an export that disagrees is deleted rather than shipped.

Nothing half-written is ever under the real names: the export is written and checked under a temp name and
renamed into place only once it passed; the old sidecar is removed just before, and the preprocessing file and
the new sidecar (with both files' sha256) written just after. A crash in between leaves an export without a sidecar, never an export
with the sidecar of another; and a second export to the same file while one runs stops at once.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart import __version__
from headstart.backbones import StagedModel
from headstart.errors import HeadstartError
from headstart.images import UnreadableImage, load_input
from headstart.files import atomic_path, atomic_write_json, atomic_write_text, exclusive
from headstart.runs import RUN_FILE, load_run, read_run
from headstart.transforms import Preprocessing

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
INPUT_NAME, OUTPUT_NAMES = "images", ("logits", "probabilities")
MAX_LOGIT_DIFFERENCE = 1e-3  # float32 through another runtime: ~1e-5 is typical, 1e-3 means something is wrong
MAX_CHECK_IMAGES = 256  # enough to catch a wrong graph; more would only cost memory (N x 3 x S x S floats)
CHECK_BATCH = 32
ONNX_OPSET = 18


class Deployable(nn.Module):
    """The fine-tuned model with its normalisation in front and a softmax behind: float RGB in [0, 1] in."""

    def __init__(self, model: StagedModel):
        super().__init__()
        self.model = model
        pre = model.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((images - self.mean) / self.std)
        return logits, logits.softmax(dim=1)


def export_format(out: Path, fmt: str | None) -> str:
    """The format asked for, or the one the file name says (.onnx, .pt2)."""
    if fmt is None:
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise HeadstartError(f"{out}: name the file .onnx or .pt2, or say --format onnx|pt2")
    if fmt not in FORMATS.values():
        raise HeadstartError(f"unknown export format '{fmt}': choose onnx or pt2")
    return fmt


def sidecar_path(out: Path) -> Path:
    """model.onnx -> model.onnx.json (never run.json or config.json, even inside a run directory)."""
    return out.with_name(out.name + ".json")


def recipe_code_path(out: Path) -> Path:
    """model.onnx -> model.onnx.preprocess.py: the file -> input code shipped with the export."""
    return out.with_name(out.name + ".preprocess.py")


def export_lock_path(out: Path) -> Path:
    """Held while `out` and its sidecar are written (a hidden file beside them)."""
    return out.with_name(f".{out.name}.lock")


def parity_inputs(pre: Preprocessing, images: list[Path] | None, n_random: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """What both models run on: `images` (the first MAX_CHECK_IMAGES readable ones) through `images.load_input`,
    the function `predict` uses and the export ships, or a fixed random batch. Returns float RGB in [0, 1] and
    where each row came from."""
    if images:
        from headstart.evaluate import images_to_predict

        rows, names = [], []
        for path in images_to_predict(images):
            if len(rows) == MAX_CHECK_IMAGES:
                break
            try:
                rows.append(torch.from_numpy(load_input(path, **pre.recipe())))
                names.append(str(path))
            except UnreadableImage:
                continue
        if not rows:
            raise HeadstartError("none of the check images could be read")
        return torch.stack(rows), names
    generator = torch.Generator().manual_seed(seed)
    batch = torch.rand(n_random, 3, pre.image_size, pre.image_size, generator=generator)
    return batch, [f"random {i}" for i in range(n_random)]


def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise HeadstartError(f"ONNX export needs the export extra ({e.name} is missing): "
                             "pip install 'headstart[export]'") from None
    return onnxruntime


def any_batch_size() -> dict:
    """The `dynamic_shapes` both exporters take: the batch dimension of `images` is free, the rest fixed."""
    return {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}


def write_onnx(module: Deployable, example: torch.Tensor, out: Path) -> None:
    """One self-contained .onnx file (weights inside, not beside it), any batch size."""
    _onnx_modules()
    torch.onnx.export(module, (example,), str(out), dynamo=True, external_data=False, opset_version=ONNX_OPSET,
                      input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_shapes=any_batch_size(),
                      verbose=False)


def load_onnx(path: Path):
    """The file as ONNX Runtime serves it: images -> logits."""
    onnxruntime = _onnx_modules()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images.numpy()})[0]


def write_pt2(module: Deployable, example: torch.Tensor, out: Path) -> None:
    """A torch.export program: loads with `torch.export.load(path).module()`, no headstart or timm needed."""
    program = torch.export.export(module, (example,), dynamic_shapes=any_batch_size())
    torch.export.save(program, str(out))


def load_pt2(path: Path):
    """The file as plain torch loads it: images -> logits."""
    program = torch.export.load(str(path)).module()

    def logits(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return program(images)[0].numpy()

    return logits


WRITERS = {"onnx": (write_onnx, load_onnx), "pt2": (write_pt2, load_pt2)}  # format -> (write, load back)


def parity(reference: torch.Tensor, exported: np.ndarray) -> dict:
    """How far the exported file's logits are from PyTorch's on the same inputs."""
    exported = torch.from_numpy(np.asarray(exported, dtype=np.float32))
    return {"max_logit_difference": float((exported - reference).abs().max()),
            "top1_agreement": float((exported.argmax(1) == reference.argmax(1)).float().mean()),
            "n": int(len(reference))}


def check_parity(module: Deployable, exported, batch: torch.Tensor, sources: list[str], described: bool) -> dict:
    """Logits of the file as loaded back (`exported`: images -> logits) against the PyTorch module's."""
    chunks = batch.split(CHECK_BATCH)
    with torch.no_grad():
        reference = torch.cat([module(chunk)[0] for chunk in chunks])
    check = parity(reference, np.concatenate([exported(chunk) for chunk in chunks]))
    check["inputs"] = (f"{len(sources)} images ({', '.join(Path(s).name for s in sources[:3])}"
                       f"{', …' if len(sources) > 3 else ''})" if described else f"{len(sources)} random images")
    return check


def file_sha256(path: Path) -> str:
    """What the sidecar records of the file it describes: a server can check it has the pair that belongs together."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checked(module: Deployable, fmt: str, out: Path, batch: torch.Tensor, sources: list[str],
                  described: bool) -> tuple[str, dict, float]:
    """Write the export under a temp name, load it back, check it against PyTorch, and only then rename it to
    `out` (dropping the old export's sidecar just before). Returns the file's sha256, the check and the seconds
    the writer took; a failed check raises and leaves nothing behind."""
    write, load = WRITERS[fmt]
    with atomic_path(out) as tmp:  # renamed to `out` only if the block ends normally
        t0 = time.perf_counter()
        write(module, batch[:2].clone(), tmp)  # a clone: a view would drag the whole check batch into a .pt2
        seconds = time.perf_counter() - t0
        check = check_parity(module, load(tmp), batch, sources, described)
        if not check["max_logit_difference"] <= MAX_LOGIT_DIFFERENCE:  # (`not <=` also catches NaN)
            raise HeadstartError(f"the {fmt} export disagrees with the PyTorch model (max logit difference "
                                 f"{check['max_logit_difference']:.2e}, top-1 agreement {check['top1_agreement']:.0%}); "
                                 "nothing was written")
        sha256 = file_sha256(tmp)
        sidecar_path(out).unlink(missing_ok=True)  # the old export's sidecar must not outlive it
    return sha256, check, seconds


def recipe_code() -> str:
    """The source of `images.py`, the module every headstart path takes its pixels from: what the export ships."""
    return inspect.getsource(inspect.getmodule(load_input))


def export_run(run_dir: str | Path, out: str | Path | None = None, fmt: str | None = None,
               images: list[str | Path] | None = None) -> dict:
    """Export the run's best weights to `out` (default: <run>/model.onnx) and write the sidecar JSON beside it.
    Returns the sidecar's content."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    out = Path(out) if out is not None else run_dir / "model.onnx"
    fmt = export_format(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = model.preprocessing
    module = Deployable(model).eval()  # (load_run gives float32 weights)
    batch, sources = parity_inputs(pre, [Path(p) for p in images] if images else None)

    # two exports to one file at once would pair one's file with the other's sidecar: the second stops here
    with exclusive(export_lock_path(out), timeout=0, what=out, hint="wait for it or use another --out"):
        sha256, check, seconds = write_checked(module, fmt, out, batch, sources, described=bool(images))
        run_info = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else {}
        code = recipe_code()
        atomic_write_text(recipe_code_path(out), code)
        sidecar = {
            "file": out.name, "sha256": sha256, "format": fmt, "classes": config["classes"],
            "input": {"name": INPUT_NAME, "shape": ["N", 3, pre.image_size, pre.image_size], "dtype": "float32",
                      "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0],
                      "preprocessing": f"{recipe_code_path(out).name}: load_input(path, **recipe), i.e. decode "
                                       "upright (EXIF), transparency onto white, any mode to 8-bit RGB, JPEGs "
                                       f"at least twice {pre.store_size} px at reduced DCT scale; resize the "
                                       f"centred square to {pre.store_size} px ({pre.interpolation}), "
                                       f"centre-crop {pre.image_size} x {pre.image_size}, divide by 255",
                      "recipe": pre.recipe(),
                      "recipe_code": {"file": recipe_code_path(out).name, "function": "load_input",
                                      "sha256": hashlib.sha256(code.encode("utf-8")).hexdigest()},
                      "resize_to": pre.store_size, "interpolation": pre.interpolation, "image_size": pre.image_size,
                      "normalisation_inside": {"mean": list(pre.mean), "std": list(pre.std)}},
            "outputs": [{"name": OUTPUT_NAMES[0], "shape": ["N", len(config["classes"])]},
                        {"name": OUTPUT_NAMES[1], "shape": ["N", len(config["classes"])]}],
            "check": check,
            "source": {"run": str(run_dir), "model": config["model"], "strategy": config["strategy"]["name"],
                       "best_val_accuracy": run_info.get("best_val_accuracy"), "epoch": config.get("epoch")},
            "export_seconds": round(seconds, 2),
            "versions": {"headstart": __version__, "torch": torch.__version__,
                         **({"opset": ONNX_OPSET} if fmt == "onnx" else {})},
        }
        atomic_write_json(sidecar_path(out), sidecar)
    return {**sidecar, "path": str(out), "sidecar": str(sidecar_path(out)), "recipe_code": str(recipe_code_path(out))}


def preprocess_as_sidecar_says(paths: list[str | Path], sidecar_file: str | Path) -> np.ndarray:
    """Images as a serving side without headstart prepares them, from the export's two side files alone (json,
    runpy and the shipped code, which needs Pillow and numpy): N x 3 x S x S float32 RGB in [0, 1]. The lines
    to copy; the tests and bench/export.py hold the result to `predict`."""
    import json
    import runpy

    sidecar_file = Path(sidecar_file)
    spec = json.loads(sidecar_file.read_text())["input"]
    code = sidecar_file.with_name(spec["recipe_code"]["file"])
    if hashlib.sha256(code.read_bytes()).hexdigest() != spec["recipe_code"]["sha256"]:
        raise HeadstartError(f"{code} is not the preprocessing this export was made with (its sha256 differs)")
    load = runpy.run_path(str(code))[spec["recipe_code"]["function"]]
    return np.stack([load(path, **spec["recipe"]) for path in paths])
