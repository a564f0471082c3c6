"""The library API: the jobs a user runs, each composed from the modules below it.

    train      one run (pipeline.train): data -> backbone -> strategy -> fit -> run directory
    compare    the controlled experiment: strategies x seeds -> summary.json + reports (its cells run here one
               after another, or as Ray tasks: executor=RayExecutor(...))
    evaluate / predict / export / inspect_model   what a finished run (or a backbone) is used for
    check_data / find_label_issues / probe / recommend   decide before training
    track_record   the benchmark recommend's rule was fitted on: regrets per policy, the measured 2 x 2

The CLI and the notebooks call these functions; none of them has a loop of its own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from headstart.analysis.check import CheckReport, check_splits, scan_data
from headstart.analysis.labels import DEFAULT_FOLDS, LabelIssueReport, check_folds, with_label_issues
from headstart.analysis.labels import find_label_issues as find_issues_in
from headstart.analysis.probe import probe
from headstart.analysis.recommend import (Recommendation, measure_and_decide, track_record, verification_labels,
                                          verification_splits, verification_verdict)
from headstart.backbones import count_params, load_backbone
from headstart.compare import compare
from headstart.console import info, warn, warn_skipped
from headstart.data import ImageSet, load_class_folders, load_data
from headstart.errors import HeadstartError
from headstart.evaluate import classification_metrics, evaluate_imagenet, evaluate_model, predict_files
from headstart.executors import RayExecutor, SerialExecutor
from headstart.export import export_run
from headstart.pipeline import train
from headstart.report.plots import plot_label_issues
from headstart.runs import is_run_dir, load_run, read_seen_images, winner_run_dir, write_json
from headstart.strategies import describe_strategy
from headstart.train import TrainConfig, resolve_strategy

__all__ = ["RayExecutor", "SerialExecutor", "TrainConfig", "check_data", "compare", "evaluate", "export",
           "find_label_issues", "inspect_model", "predict", "probe", "recommend", "track_record", "train"]


def check_data(data: str | Path, *, deep: bool = True, labels: bool = False, model: str = "efficientnet_lite0",
               folds: int = DEFAULT_FOLDS, image_size: int | None = None, weights: str | None = None,
               val_fraction: float = 0.2, seed: int = 0, classes: list[str] | None = None,
               per_class: int | None = None, out: str | Path | None = None, cache_dir=None,
               device: str = "auto") -> CheckReport:
    """Pre-flight `data` (analysis.check): counts, imbalance, unreadable files, duplicates, leakage; `deep=False`
    decodes nothing. `labels` also looks for mislabelled training images (`find_label_issues`, with `model`'s
    frozen features and `folds` folds). `out`: write check.json there and, with `labels`, label-issues.png (the
    suspects as an image grid, most suspicious first)."""
    splits = scan_data(data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class)
    if labels:
        check_folds(splits.train.labels, splits.classes, folds)  # before the deep check's work, not after it
    report = check_splits(splits, deep=deep)
    if labels:
        found = find_issues_in(splits.train, model, folds=folds, seed=seed, image_size=image_size, weights=weights,
                               cache_dir=cache_dir, device=device)
        report = with_label_issues(report, found)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "check.json", report.to_dict())
        if labels:
            plot_label_issues(report.label_issues, out / "label-issues.png", splits.train.read)
    return report


def find_label_issues(data: str | Path, *, model: str = "efficientnet_lite0", folds: int = DEFAULT_FOLDS,
                      image_size: int | None = None, weights: str | None = None, val_fraction: float = 0.2,
                      seed: int = 0, classes: list[str] | None = None, per_class: int | None = None, cache_dir=None,
                      use_cache: bool = True, device: str = "auto") -> LabelIssueReport:
    """Likely mislabelled training images of `data`, most suspicious first: cleanlab on out-of-fold probabilities
    of a logistic regression on `model`'s frozen pooled features (the `linear` strategy's cached ones)."""
    splits = load_data(data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class)
    return find_issues_in(splits.train, model, folds=folds, seed=seed, image_size=image_size, weights=weights,
                          cache_dir=cache_dir, use_cache=use_cache, device=device)


def evaluate(model_or_run: str | Path, data: str | Path, *, allow_seen: bool = False, **kwargs) -> dict:
    """A run directory (or a comparison: its chosen run): metrics of the fine-tuned model on `data` (its test/
    split, else its val/ split, else the class folders). A model name: its own ImageNet head's top-1/top-5 on
    ImageNet synset folders.

    A run never scores its own training images silently: their content hashes are compared with the ones the run
    recorded (seen_images.json), and training images are refused unless `allow_seen` (the figure would measure
    memory, not generalisation). Images the run selected its best epoch on (its val images) are scored with a
    warning, and the result says how many there were (`seen`)."""
    model_or_run = _run_or_winner(model_or_run)
    if is_run_dir(model_or_run):
        model, config = load_run(model_or_run)
        folder = evaluation_folder(Path(data))
        images, skipped = load_class_folders(folder)
        warn_skipped(skipped, "non-image files")
        unknown = [c for c in images.classes if c not in config["classes"]]
        if unknown:
            raise HeadstartError(f"{folder} has classes the run was not trained on: {', '.join(unknown)}")
        remap = [config["classes"].index(c) for c in images.classes]
        images = replace(images, classes=config["classes"], labels=[remap[y] for y in images.labels])
        seen = seen_images(Path(model_or_run), images, folder, allow_seen)
        logits, labels, _ = evaluate_model(model, images, **kwargs)
        return {**classification_metrics(logits, labels, config["classes"]), "images": str(folder), **seen}
    model = load_backbone(str(model_or_run))
    if not model.pretrained:
        warn("evaluating random weights: expect chance accuracy")
    return evaluate_imagenet(model, data, **kwargs)


def evaluation_folder(data: Path) -> Path:
    """The images `evaluate` scores: a test/ split if `data` has one, else its val/ split, else `data` itself."""
    for split in ("test", "val"):
        if (data / split).is_dir():
            return data / split
    return data


def seen_images(run_dir: Path, images: ImageSet, folder: Path, allow_seen: bool) -> dict:
    """How many of `images` the run trained on and selected on, by content (the recorded hashes); refuses
    training images unless `allow_seen`, warns about selection (val) images."""
    recorded = read_seen_images(run_dir)
    if recorded is None:
        note = (f"{run_dir} predates the record of its training images: whether {folder} holds some of them "
                "cannot be checked")
        warn(note)
        return {"seen": None, "seen_note": note}
    hashes = images.fingerprints()
    trained = sum(h in recorded["train"] for h in hashes)
    selected = sum(h in recorded["val"] and h not in recorded["train"] for h in hashes)
    n = len(hashes)
    if trained and not allow_seen:
        raise HeadstartError(f"{trained} of {n} images in {folder} are images this run trained on: their accuracy "
                             "measures memory, not new images; evaluate on images it never saw (a test/ folder), or "
                             "pass --allow-seen to score them anyway")
    notes = []
    if trained:
        notes.append(f"{trained} of {n} images are training images of this run (scored because allow_seen): "
                     "the figure is optimistic")
    if selected:
        notes.append(f"{selected} of {n} images are this run's val images, on which its best epoch was chosen: "
                     "the figure is optimistic")
    for note in notes:
        warn(note)
    return {"seen": {"train": trained, "val": selected, "unseen": n - trained - selected},
            "seen_note": "; ".join(notes) or f"none of the {n} images was used to train or select this run"}


def predict(run_dir: str | Path, paths: list[str | Path], top_k: int = 1, precision: str = "auto") -> list[dict]:
    """Top-k labels with probabilities for image files or folders, from a run (or a comparison's winner);
    `precision`: fp32 | bf16 | auto (precision.py)."""
    model, config = load_run(_run_or_winner(run_dir))
    return predict_files(model, config["classes"], paths, top_k=top_k, precision=precision)


def export(run_dir: str | Path, out: str | Path | None = None, fmt: str | None = None,
           images: list[str | Path] | None = None) -> dict:
    """The run's best model as one .onnx or .pt2 file that serves without headstart (normalisation and softmax
    inside), checked against PyTorch on `images` (or a random batch); a `<file>.json` sidecar names the classes
    and the resize/crop to apply. Returns the sidecar."""
    return export_run(_run_or_winner(run_dir), out, fmt, images)


def _run_or_winner(path: str | Path) -> Path:
    chosen = winner_run_dir(path)
    if chosen != Path(path):
        info(f"{path} is a comparison: using its winner's best run, {chosen}")
    return chosen


def inspect_model(name: str, strategy: str = "linear", num_classes: int | None = None, train_last: int | None = None,
                  freeze_bn: bool | None = None, weights: str | None = None) -> dict:
    """The backbone's stage groups with parameter counts, what trains under `strategy`, and its head.
    `weights="random"` inspects the architecture alone, on a machine that does not have its pretrained weights."""
    spec = resolve_strategy(TrainConfig(strategy=strategy, train_last=train_last, freeze_bn=freeze_bn))
    model = load_backbone(name, pretrained=spec.pretrained, weights=weights)
    if num_classes:
        model.reset_head(num_classes)
    return {"model": name, "weights": model.weights, "strategy": spec.name, "preprocessing": model.preprocessing.to_dict(),
            "groups": describe_strategy(spec, model), "head": repr(model.head.fc),
            "total_params": count_params(model),
            "trainable_params": sum(r["params"] for r in describe_strategy(spec, model) if r["trainable"])}


def recommend(data, *, model: str = "efficientnet_lite0", per_class: int | None = None, classes=None,
              val_fraction: float = 0.2, seed: int = 0, image_size: int | None = None, verify: bool = False,
              verify_epochs: int = 4, out: str | Path | None = None, cache_dir=None) -> Recommendation:
    """A strategy for `data` from measurements (analysis.recommend), with reasons. `verify` also runs `compare` on
    the pick and the runner-up (`verify_epochs`, one seed, the same augmentation for both) and says, by compare's
    verdict on test images, whether the pick held (test: the data's test images, else its shipped val/, else 20%
    held out: `verification_splits`)."""
    rec, splits = measure_and_decide(data, model=model, per_class=per_class, classes=classes, val_fraction=val_fraction,
                                     seed=seed, image_size=image_size, cache_dir=cache_dir)
    if verify:
        judged = verification_splits(data, splits, val_fraction=val_fraction, seed=seed, classes=classes,
                                     per_class=per_class)
        base = TrainConfig(model=model, epochs=verify_epochs, image_size=rec.hyperparameters["image_size"],
                           patience=None, cache_dir=cache_dir)
        summary = compare(judged, verification_labels(rec), [seed], Path(out or "runs/recommend-verify"), base,
                          command="recommend --verify")
        rec.verify = verification_verdict(rec, summary)
    return rec
