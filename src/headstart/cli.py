"""The `headstart` command: a thin typer layer over `headstart.api`.

Each command parses flags into the library's own types, calls one API function, and prints the result
(a rich table for people, `--json` for programs). A `HeadstartError` becomes one red line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from functools import wraps
from pathlib import Path

import typer
from rich.markup import escape

from headstart.console import console
from headstart.errors import HeadstartError

app = typer.Typer(help="Fine-tune pretrained image models on small datasets, and see which way works.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

DATA_HELP = ("Folder with train/ and val/ (and test/) class folders, a folder of class folders, a CSV (path,label[,split]) "
             "or 'fashion-mnist'.")
TEST_FRACTION_HELP = "Hold out this share of unsplit data (stratified, --data-seed) as test images: the reported figures."
VAL_AS_TEST_HELP = "The data's val/ split becomes the test set (reported on, never selected on); val is carved from train."
BALANCE_HELP = ("Imbalanced training classes: weighted (class-weighted loss), sampler (class-balanced batches), none; "
                "auto: the measured better one when the classes are imbalanced, none otherwise.")


def friendly_errors(fn):
    """User mistakes end in one line and exit 2, not a traceback; Ctrl-C outside training exits 130."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}")  # '[cluster]' in a message is text, not a style
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.callback()
def main(offline: bool = typer.Option(False, "--offline", help="Use only pretrained weights already on this machine "
                                      "(the Hugging Face and torch hub caches, --weights FILE): never download. The "
                                      "same as HF_HUB_OFFLINE=1.")):
    """Fine-tune pretrained image models on small datasets, and see which way works."""
    if offline:
        # the variable huggingface_hub and timm honour, read again by backbones.offline() at every load; being in
        # the environment, it also reaches the processes `--devices N` starts
        os.environ["HF_HUB_OFFLINE"] = "1"


# Options several commands share, defined once so they read and behave the same everywhere
MODEL_OPTION = typer.Option("efficientnet_lite0", help="Backbone: registered, timm or torchvision:NAME.")
PER_CLASS_OPTION = typer.Option(None, help="Subsample training data to N images per class.")
CLASSES_OPTION = typer.Option(None, help="Comma-separated subset of classes.")
GHOST_BN_OPTION = typer.Option(None, "--ghost-bn", min=0, help="Where BatchNorm trains (scratch, --train-bn): normalise "
                               "over parts of N images of each batch (ghost batch norm): less memory, faster on the "
                               "CPU, not the whole batch's step (docs/performance.md). Default: parts of 8 at 224 px, "
                               "whole batches at 112 px or less; 0: always whole.")
MEASURE_SIZE_OPTION = typer.Option(None, help="Working resolution (default: what train would use).")
PRECISION_OPTION = typer.Option("auto", help="Forward passes in fp32 or bf16 (bfloat16 autocast; needs AMX or "
                                "AVX512-BF16 on a CPU); auto: bf16 where the hardware has it and parity was measured.")

@app.command()
@friendly_errors
def train(
    data: str = typer.Argument(..., help=DATA_HELP),
    model: str = MODEL_OPTION,
    strategy: str = typer.Option("linear", help="scratch | linear | partial | full | gradual | lp-ft"),
    out: Path = typer.Option(None, help="Run directory (default runs/<strategy>-<time>)."),
    epochs: int = typer.Option(None, help="Epochs (default: the strategy's)."),
    batch_size: int = typer.Option(32),
    micro_batch: int = typer.Option(None, min=0, help="Images per forward/backward pass (gradients add up to the batch's "
                                    "step; default: what keeps memory low where BatchNorm allows; 0: whole batch)."),
    ghost_bn: int = GHOST_BN_OPTION,
    lr: float = typer.Option(None, help="LR of the top backbone stage group."),
    head_lr: float = typer.Option(None, help="LR of the new head."),
    lr_decay: float = typer.Option(None, help="LR factor per stage group toward the stem."),
    train_last: int = typer.Option(None, help="partial: how many last stage groups train (default 2)."),
    optimizer: str = typer.Option("adamw", help="adamw | sgd"),
    weight_decay: float = typer.Option(0.01),
    label_smoothing: float = typer.Option(0.1),
    warmup_epochs: float = typer.Option(1.0),
    unfreeze_warmup_epochs: float = typer.Option(0.0, help="gradual, lp-ft: warm a group that unfreezes mid-run up "
                                                           "again from 1% of its LR over this many epochs."),
    augment: str = typer.Option(None, help="none | light | strong (default: the strategy's)."),
    views: int = typer.Option(None, help="With augmentation and a frozen prefix (linear, partial): cache the prefix's "
                                         "output for this many augmented views per image instead of recomputing it "
                                         "every epoch (default: 8 for linear, one per two epochs for partial; 0: "
                                         "fresh augmentation every epoch).", show_default=False),
    patience: int = typer.Option(5, help="Early stopping: epochs without val improvement (0: off)."),
    seed: int = typer.Option(0),
    image_size: int = typer.Option(None, help="Working resolution (default: the model's)."),
    weights: Path = typer.Option(None, help="State dict file to start from instead of the default weights."),
    val_fraction: float = typer.Option(0.2, help="Held-out share when DATA has no val/ split."),
    classes: str = CLASSES_OPTION,
    per_class: int = PER_CLASS_OPTION,
    val_per_class: int = typer.Option(None, help="Validate on at most N images per class (drawn with --data-seed)."),
    test_fraction: float = typer.Option(0.0, help=TEST_FRACTION_HELP),
    val_as_test: bool = typer.Option(False, "--val-as-test", help=VAL_AS_TEST_HELP),
    balance: str = typer.Option("auto", help=BALANCE_HELP),
    data_seed: int = typer.Option(0, help="Seed of the split and the subsample: fixed, so runs with other --seed "
                                          "values see the same images."),
    cache_dir: Path = typer.Option(None, help="Cache folder (default $HEADSTART_CACHE or ~/.cache/headstart)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Bypass the on-disk caches."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    devices: int = typer.Option(1, help="Data-parallel processes, one per GPU (Lightning Fabric DDP); --batch-size "
                                        "stays the global batch."),
    precision: str = PRECISION_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print run.json to stdout."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn/--train-bn", help="Keep every BatchNorm's pretrained statistics, "
                                   "trained groups too (the default of pretrained strategies), or let trained groups "
                                   "re-estimate them.", show_default=False),
    l2sp: float = typer.Option(0.0, help="L2-SP: penalise ALPHA/2 ||w - w0||^2, the distance from the pretrained weights."),
    monitor_folder: str = typer.Option(None, help="ImageNet synset folders for the old-task top-1 of the forgetting "
                                                  "monitor (default: ../shared/data/imagenet-samples/val if present; 'none': off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last whole epoch, exactly "
                                                        "as it would have gone on."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep the resume point (resume.pt) after "
                                                                            "the run finishes."),
):
    """Fine-tune a pretrained backbone on DATA with one strategy; write a run directory."""
    from headstart.api import TrainConfig, train as train_run

    cfg = TrainConfig(model=model, strategy=strategy, epochs=epochs, batch_size=batch_size, micro_batch=micro_batch,
                      ghost_batch_norm=ghost_bn,
                      lr=lr, head_lr=head_lr,
                      lr_decay=lr_decay, train_last=train_last, optimizer=optimizer, weight_decay=weight_decay,
                      label_smoothing=label_smoothing, warmup_epochs=warmup_epochs,
                      unfreeze_warmup_epochs=unfreeze_warmup_epochs, augment=augment, views=views,
                      patience=patience or None, seed=seed, image_size=image_size,
                      weights=str(weights) if weights else None, cache_dir=str(cache_dir) if cache_dir else None,
                      use_cache=not no_cache, device=device, devices=devices, l2sp=l2sp, monitor_folder=monitor_folder,
                      freeze_bn=freeze_bn, resume=resume, keep_checkpoints=keep_checkpoints, balance=balance,
                      precision=precision)
    run = train_run(data, cfg, out, val_fraction=val_fraction, classes=split_list(classes), per_class=per_class,
                    data_seed=data_seed, test_fraction=test_fraction, val_as_test=val_as_test,
                    val_per_class=val_per_class, command=shlex.join(["headstart", *sys.argv[1:]]))
    if as_json and run is not None:  # (None in the extra processes of --devices N: the first one reports)
        print_json(run)


@app.command()
@friendly_errors
def compare(
    data: str = typer.Argument(..., help=DATA_HELP),
    strategies: str = typer.Option("scratch,linear,partial,full,gradual",
                                   help="Comma-separated strategies; partial:K trains the last K stage groups "
                                        "(e.g. partial:1,partial:3 compares two depths)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds: every strategy runs once per seed."),
    out: Path = typer.Option(..., help="Folder for runs/, summary.json, report.html, report.md."),
    model: str = typer.Option("efficientnet_lite0", help="The one backbone every strategy uses."),
    weights: Path = typer.Option(None, help="State dict file every pretrained strategy starts from instead of the "
                                            "model's default weights."),
    epochs: int = typer.Option(None, help="The epoch budget of every run (default: the strategies' default)."),
    augment: str = typer.Option(None, help="none | light | strong, the same for every strategy (default light)."),
    views: int = typer.Option(None, help="Cached augmented views of a frozen prefix (default: 8 for linear, one per "
                                         "two epochs for partial; 0: fresh augmentation every epoch).",
                              show_default=False),
    patience: int = typer.Option(0, help="Early stopping (0: off, so every strategy gets the same budget)."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn/--train-bn", help="Keep every BatchNorm's pretrained statistics "
                                   "(the default of pretrained strategies), or let trained groups re-estimate them.",
                                   show_default=False),
    batch_size: int = typer.Option(32),
    micro_batch: int = typer.Option(None, min=0, help="Images per forward/backward pass (gradients add up to the batch's "
                                    "step; default: what keeps memory low where BatchNorm allows; 0: whole batch)."),
    ghost_bn: int = GHOST_BN_OPTION,
    image_size: int = typer.Option(None, help="Working resolution (default: the model's)."),
    per_class: int = typer.Option(None, help="Subsample training data to N images per class (one draw for all runs)."),
    val_per_class: int = typer.Option(None, help="Validate on at most N images per class (drawn with --data-seed): "
                                                 "a cheaper selection, the test figures untouched."),
    classes: str = CLASSES_OPTION,
    val_fraction: float = typer.Option(0.2, help="Held-out share when DATA has no val/ split."),
    test_fraction: float = typer.Option(0.0, help=TEST_FRACTION_HELP),
    val_as_test: bool = typer.Option(False, "--val-as-test", help=VAL_AS_TEST_HELP),
    folds: int = typer.Option(None, help="K-fold cross-validation: every image is a test image once; each fold selects "
                                         "on its own val; the figures pool the out-of-fold predictions."),
    balance: str = typer.Option("auto", help=BALANCE_HELP),
    data_seed: int = typer.Option(0, help="Seed of the split and the subsample (fixed across runs)."),
    cache_dir: Path = typer.Option(None, help="Cache folder (default $HEADSTART_CACHE or ~/.cache/headstart)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    devices: int = typer.Option(1, help="Data-parallel processes for every run, one per GPU (Lightning Fabric DDP)."),
    precision: str = PRECISION_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep every run's resume point."),
    executor: str = typer.Option("serial", help="serial: the runs one after another in this process; ray: every run "
                                                "a Ray task, side by side (pip install 'headstart[cluster]')."),
    address: str = typer.Option(None, help="ray: an existing cluster ('auto', 'ray://head:10001'); default: a local "
                                           "Ray instance on this machine's cores and GPUs."),
    max_parallel: int = typer.Option(None, help="ray: at most this many runs at once (default: what the resources "
                                                "allow)."),
    cpus_per_cell: float = typer.Option(None, help="ray: CPUs per run (default 1; with GPUs, their share of the CPUs)."),
    gpus_per_cell: float = typer.Option(None, help="ray: GPUs per run, a fraction shares one (default 1 if the cluster "
                                                   "has GPUs, else 0)."),
    memory_per_cell: float = typer.Option(None, help="ray: memory per run in GB (Ray then schedules by it)."),
):
    """Train several strategies × seeds under identical conditions; judge them on test images nothing was selected
    on (a test split, --val-as-test, --test-fraction or --folds); write summary.json and report.html.

    Finished runs are kept: after Ctrl-C, the same command finishes only the missing runs."""
    from headstart.api import TrainConfig, compare as compare_api

    runner = cell_executor(executor, address=address, max_parallel=max_parallel, cpus_per_cell=cpus_per_cell,
                           gpus_per_cell=gpus_per_cell, memory_per_cell=memory_per_cell)
    try:
        seed_list = [int(s) for s in split_list(seeds) or []]
    except ValueError:
        raise HeadstartError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    cfg = TrainConfig(model=model, weights=str(weights) if weights else None, epochs=epochs, augment=augment, views=views,
                      patience=patience or None, freeze_bn=freeze_bn,
                      batch_size=batch_size, micro_batch=micro_batch, ghost_batch_norm=ghost_bn,
                      image_size=image_size,
                      cache_dir=str(cache_dir) if cache_dir else None,
                      device=device, devices=devices, keep_checkpoints=keep_checkpoints, balance=balance,
                      precision=precision)
    summary = compare_api(data, split_list(strategies) or [], seed_list, out, cfg, per_class=per_class,
                          val_per_class=val_per_class, classes=split_list(classes), val_fraction=val_fraction,
                          data_seed=data_seed, test_fraction=test_fraction, val_as_test=val_as_test, folds=folds,
                          command=shlex.join(["headstart", *sys.argv[1:]]), executor=runner)
    if summary is None:  # an extra process of --devices N: the first one reports
        return
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    from headstart.report.markdown import badge, evidence, findings, results_rows

    metric = summary["metric"].replace("_", " ")
    table = Table(title=findings(summary)[0], title_justify="left")
    for col in ("strategy", f"test {metric} (95% interval)", "per seed", "val acc (selected on)", "train", "gap",
                "trainable", "seconds"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in results_rows(summary):
        mark = badge(r)
        table.add_row(f"[bold]{r['strategy']}[/] ({mark})" if mark in ("winner", "recommended") else
                      f"{r['strategy']}{f' ({mark})' if mark else ''}",
                      f"{r['test']:.3f} ({r['low']:.3f}-{r['high']:.3f})", " ".join(f"{v:.3f}" for v in r["per_seed"]),
                      f"{r['val_best']:.3f}", f"{r['train']:.3f}", f"{r['gap']:+.3f}", f"{r['params']:,.0f}",
                      f"{r['seconds']:.0f}")
    console.print(table)
    console.print(f"[dim]{evidence(summary)}[/]")
    for line in findings(summary)[1:]:
        console.print(line)
    console.print(f"report: [bold]{Path(out) / 'report.html'}[/]  (also report.md, summary.json)")
    if summary["failed"]:  # the report stands on the runs that finished; the exit status says it is incomplete
        raise typer.Exit(1)


def cell_executor(name: str, *, address: str | None, max_parallel: int | None, cpus_per_cell: float | None,
                  gpus_per_cell: float | None, memory_per_cell: float | None):
    """--executor and its options as the library's executor; the Ray options refused without --executor ray."""
    from headstart.api import RayExecutor, SerialExecutor

    ray_options = {"address": address, "max_parallel": max_parallel, "cpus_per_cell": cpus_per_cell,
                   "gpus_per_cell": gpus_per_cell, "memory_per_cell_gb": memory_per_cell}
    if name == "serial":
        given = [k for k, v in ray_options.items() if v is not None]
        if given:
            raise HeadstartError(f"--{given[0].replace('_gb', '').replace('_', '-')} is an option of --executor ray")
        return SerialExecutor()
    if name == "ray":
        return RayExecutor(**ray_options)
    raise HeadstartError(f"--executor must be serial or ray, got {name!r}")


@app.command()
@friendly_errors
def evaluate(
    model_or_run: str = typer.Argument(..., help="A run directory (or a comparison: its winner's best run), or a "
                                                 "pretrained model name (ImageNet head)."),
    data: Path = typer.Argument(..., help="Class folders (a run) or ImageNet synset folders (a model name)."),
    as_json: bool = typer.Option(False, "--json"),
    out: Path = typer.Option(None, help="Where to write confusion.png (runs only; default: the run directory)."),
    allow_seen: bool = typer.Option(False, "--allow-seen", help="Score images the run trained on too (refused by "
                                    "default: their accuracy measures memory, not new images)."),
    precision: str = PRECISION_OPTION,
):
    """Accuracy of a fine-tuned run on labelled data (its test/, else val/, else the folder), or of a pretrained
    model on ImageNet folders. A run's own training images are refused unless --allow-seen."""
    from headstart.api import evaluate as evaluate_api

    result = evaluate_api(model_or_run, data, allow_seen=allow_seen, precision=precision)
    if "confusion_matrix" in result:  # a fine-tuned run (or a comparison's winner), not an ImageNet check
        from headstart.report.plots import plot_confusion

        target = (out or Path(model_or_run)) / "confusion_eval.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(result["confusion_matrix"], result["classes"], target, f"accuracy {result['accuracy']:.3f}")
        result["confusion_png"] = str(target)
    if as_json:
        print_json(result)
        return
    if "top1" in result:
        console.print(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  on {result['n']} images")
        return
    from rich.table import Table

    table = Table(title=f"accuracy {result['accuracy']:.4f} · balanced {result['balanced_accuracy']:.4f} · n={result['n']} "
                        f"· {result['images']}")
    for col in ("class", "precision", "recall", "support"):
        table.add_column(col)
    for name, m in result["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", str(m["support"]))
    console.print(table)
    console.print(f"[dim]{result['seen_note']}[/]")
    console.print(f"confusion matrix: {result['confusion_png']}")


@app.command()
@friendly_errors
def predict(
    run: Path = typer.Argument(..., help="Run directory (or a comparison: its winner's best run)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(1, help="How many labels per image."),
    csv_path: Path = typer.Option(None, "--csv", help="Also write the predictions to this CSV."),
    precision: str = PRECISION_OPTION,
    as_json: bool = typer.Option(False, "--json"),
):
    """Labels with probabilities for images, from a fine-tuned run."""
    from headstart.api import predict as predict_api

    results = predict_api(run, images, top_k=top_k, precision=precision)
    if csv_path:
        import csv

        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "probability", "top_k", "error"])
            for r in results:
                topk = ";".join(f"{t['label']}:{t['probability']:.4f}" for t in r.get("top_k", []))
                writer.writerow([r["path"], r.get("label", ""), f"{r['probability']:.4f}" if "probability" in r else "", topk, r.get("error", "")])
    if as_json:
        print_json(results)
        return
    for r in results:
        if "error" in r:
            console.print(f"[red]{r['path']}: unreadable ({r['error']})[/]")
        else:
            others = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"][1:])
            console.print(f"{r['path']}: [bold]{r['label']}[/] {r['probability']:.3f}  {others}")


@app.command()
@friendly_errors
def export(
    run: Path = typer.Argument(..., help="Run directory (or a comparison: its winner's best run)."),
    out: Path = typer.Option(None, help="The file to write: .onnx or .pt2 (default: model.onnx in the run)."),
    fmt: str = typer.Option(None, "--format", help="onnx or pt2 (default: from the file name)."),
    images: list[Path] = typer.Option(None, "--check", help="Images or folders to check the export on "
                                      "(default: a random batch). Repeat for several."),
    as_json: bool = typer.Option(False, "--json"),
):
    """One file that serves the run's model without headstart (ONNX or torch.export), checked against PyTorch."""
    from headstart.api import export as export_api

    result = export_api(run, out, fmt, images or None)
    if as_json:
        print_json(result)
        return
    check, shape = result["check"], result["input"]["shape"]
    console.print(f"wrote [bold]{result['path']}[/] ({result['format']}, {len(result['classes'])} classes) "
                  f"and {result['sidecar']}")
    console.print(f"  input '{result['input']['name']}': float32 {' x '.join(map(str, shape))} RGB in [0, 1] "
                  f"after {result['input']['preprocessing']}; outputs: logits, probabilities")
    console.print(f"  checked on {check['inputs']}: max logit difference {check['max_logit_difference']:.1e}, "
                  f"top-1 agreement {check['top1_agreement']:.0%}")


@app.command()
@friendly_errors
def inspect(
    model: str = typer.Argument("efficientnet_lite0"),
    strategy: str = typer.Option("linear"),
    num_classes: int = typer.Option(None, help="Replace the head for N classes."),
    train_last: int = typer.Option(None, help="partial: how many last stage groups train."),
    diagram: Path = typer.Option(None, help="Also draw the frozen/trainable diagram into this SVG file."),
    freeze_bn: bool = typer.Option(None, "--freeze-bn/--train-bn", help="BatchNorm statistics: kept pretrained "
                                   "(the default of pretrained strategies) or re-estimated in trained groups.",
                                   show_default=False),
    weights: str = typer.Option(None, help="State dict file instead of the default weights, or 'random' to inspect "
                                           "the architecture without its pretrained weights."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Stage groups, parameters, and what trains under a strategy: the model is just an nn.Module."""
    from rich.table import Table

    from headstart.api import inspect_model

    info = inspect_model(model, strategy, num_classes, train_last, freeze_bn, weights=weights)
    if diagram:
        from headstart.report.diagram import DiagramRow, write_diagram
        from headstart.strategies import get_strategy

        row = DiagramRow(info["strategy"], get_strategy(strategy).pretrained, info["groups"])
        write_diagram([row], diagram, f"{model} · {strategy}")
        console.print(f"diagram: {diagram}")
    if as_json:
        print_json(info)
        return
    table = Table(title=f"{model} · {strategy} · weights: {info['weights']}", title_justify="left")
    for col in ("group", "params", "trainable", "lr", "batchnorm", "unfreezes at epoch"):
        table.add_column(col)
    for r in info["groups"]:
        table.add_row(r["group"], f"{r['params']:,}", "yes" if r["trainable"] else "frozen",
                      f"{r['lr']:.2g}" if r["lr"] else "-", r["batchnorm"],
                      "-" if r["unfreezes_at_epoch"] is None else str(r["unfreezes_at_epoch"] + 1))
    console.print(table)
    console.print(f"head: {info['head']}")
    console.print(f"trainable {info['trainable_params']:,} of {info['total_params']:,} parameters · "
                  f"input {info['preprocessing']['image_size']}px, mean {info['preprocessing']['mean']}, "
                  f"std {info['preprocessing']['std']}")
    if any(r["batchnorm"].startswith(("eval", "train")) for r in info["groups"]):
        console.print("Frozen groups keep BatchNorm in eval mode: their running statistics stay the pretrained ones.")
    if any(r["batchnorm"].startswith("LayerNorm") for r in info["groups"]):
        console.print("LayerNorm has no running statistics (each sample is normalised by its own): nothing to keep "
                      "or re-estimate, --freeze-bn/--train-bn change nothing there.")


# ------------------------------------------------------------------------- analysis: check, probe, recommend
@app.command()
@friendly_errors
def check(
    data: str = typer.Argument(..., help=DATA_HELP),
    fast: bool = typer.Option(False, "--fast", help="Only what needs no decoding (what `train` runs first)."),
    labels: bool = typer.Option(False, "--labels", help="Also find likely mislabelled training images (cleanlab on "
                                "out-of-fold probabilities of a logistic regression on the frozen features)."),
    model: str = typer.Option("efficientnet_lite0", help="--labels: the backbone whose frozen features are used."),
    folds: int = typer.Option(5, help="--labels: stratified folds of the out-of-fold probabilities."),
    image_size: int = typer.Option(None, help="--labels: working resolution (default: the model's, as train)."),
    weights: Path = typer.Option(None, help="--labels: state dict file instead of the default weights."),
    out: Path = typer.Option(None, help="Write check.json here (and with --labels label-issues.png, the suspects "
                                        "as an image grid)."),
    per_class: int = PER_CLASS_OPTION,
    classes: str = CLASSES_OPTION,
    val_fraction: float = typer.Option(0.2, help="Held-out share when DATA has no val/ split."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
):
    """Pre-flight DATA: counts, imbalance, unreadable files, duplicates and train/val leakage (and with --labels
    likely label errors). Exit 1 on errors."""
    if labels or out:
        from headstart.api import check_data

        report = check_data(data, deep=not fast, labels=labels, model=model, folds=folds, image_size=image_size,
                            weights=str(weights) if weights else None, val_fraction=val_fraction, seed=seed,
                            classes=split_list(classes), per_class=per_class, out=out)
    else:  # the plain check needs no torch: importing the API (torch, timm) would add seconds to its start
        from headstart.analysis.check import check_data as check_only

        report = check_only(data, deep=not fast, val_fraction=val_fraction, seed=seed, classes=split_list(classes),
                            per_class=per_class)
    if as_json:
        print_json(report.to_dict())
    else:
        print_check(report)
        if report.label_issues is not None:
            print_label_issues(report.label_issues, out)
    if not report.ok:
        raise typer.Exit(1)


def print_check(report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.source} · imbalance {report.imbalance_ratio or 0:.1f}:1", title_justify="left")
    for col in ("class", "train", "val"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in report.classes:
        table.add_row(c, str(report.counts["train"][c]), str(report.counts["val"][c]))
    console.print(table)
    if report.images:
        sides = report.images["min_side"] or {}
        console.print(f"{report.images['decoded']} images decoded · shorter side {sides.get('min')}-{sides.get('max')}px "
                      f"(median {sides.get('median')}) · modes {report.images['modes']}")
    colour = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}
    for p in report.problems:
        console.print(f"[{colour[p.severity]}]{p.severity}[/] {p.message}\n  [green]fix:[/] {p.fix}")
        if p.kind == "label-issues":  # its files are listed in the table that follows
            continue
        for f in p.files[:10]:
            console.print(f"    {f}")
        if len(p.files) > 10:
            console.print(f"    ... and {len(p.files) - 10} more (--json lists all)")
    if not report.problems:
        console.print("no problems found")


def print_label_issues(found: dict, out: Path | None, most: int = 30) -> None:
    """The suspects, most suspicious first, with paths relative to the folder they share (short enough to read)."""
    import os

    from rich.table import Table

    issues = found["issues"]
    if not issues:
        console.print(f"no likely label errors among {found['n_images']} training images "
                      f"(out-of-fold accuracy {found['oof_accuracy']:.3f})")
        return
    paths = [i["path"] for i in issues]
    common = os.path.commonpath(paths) if all(os.path.isabs(p) for p in paths) else ""
    common = os.path.dirname(common) if common in paths else common
    table = Table(title=f"{len(issues)} likely label errors among {found['n_images']} training images"
                        + (f" · paths under {common}" if common else ""), title_justify="left")
    for col in ("#", "image", "given", "suspected", "confidence"):
        table.add_column(col, justify="right" if col in ("#", "confidence") else "left")
    for rank, issue in enumerate(issues[:most], 1):
        shown = os.path.relpath(issue["path"], common) if common else issue["path"]
        table.add_row(str(rank), shown, issue["given"], issue["suspected"], f"{issue['confidence']:.2f}")
    console.print(table)
    if len(issues) > most:
        console.print(f"... and {len(issues) - most} more (--json lists all)")
    console.print(f"[dim]{found['model']} features at {found['image_size']}px · logistic regression (C={found['c']:g}), "
                  f"{found['folds']}-fold out-of-fold accuracy {found['oof_accuracy']:.3f} · cleanlab · confidence: "
                  "the model's probability of the suspected label[/]")
    console.print(f"image grid: {out / 'label-issues.png'}" if out else
                  "add --out DIR to see them as an image grid (label-issues.png)")


@app.command()
@friendly_errors
def probe(
    data: str = typer.Argument(..., help=DATA_HELP),
    model: str = MODEL_OPTION,
    image_size: int = MEASURE_SIZE_OPTION,
    per_class: int = PER_CLASS_OPTION,
    classes: str = CLASSES_OPTION,
    val_fraction: float = typer.Option(0.2),
    seed: int = typer.Option(0),
    weights: Path = typer.Option(None, help="State dict file instead of the default weights."),
    out: Path = typer.Option(None, help="Write probe.json and probe.png (accuracy and similarity vs depth) here."),
    precision: str = PRECISION_OPTION,
    as_json: bool = typer.Option(False, "--json"),
):
    """What transfers: linear-probe accuracy after every stage group, and similarity to the pretraining data."""
    from rich.table import Table

    from headstart.report.plots import plot_probe
    from headstart.analysis.probe import probe as run_probe

    report = run_probe(data, model=model, image_size=image_size, per_class=per_class, classes=split_list(classes),
                       val_fraction=val_fraction, seed=seed, weights=str(weights) if weights else None,
                       precision=precision)
    if out:
        from headstart.runs import write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "probe.json", report.to_dict())
        plot_probe(report, out / "probe.png")
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=f"{report.model} · {report.n_train} train / {report.n_val} val at {report.image_size}px",
                  title_justify="left")
    for col in ("stage", "features", "probe acc (CV)", "probe acc (val)", "similarity"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in report.stages:
        table.add_row(s.stage, str(s.features), f"{s.cv_accuracy:.3f}", f"{s.val_accuracy:.3f}",
                      "-" if s.similarity is None else f"{s.similarity:.2f}")
    console.print(table)
    console.print(f"best features: {report.best.stage} · similarity to the pretraining data: low-level "
                  f"{report.similarity('low') or 0:.2f}, high-level {report.similarity('high') or 0:.2f} (1 = same statistics)")
    if out:
        console.print(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")


@app.command()
@friendly_errors
def recommend(
    data: str = typer.Argument(..., help=DATA_HELP),
    model: str = MODEL_OPTION,
    per_class: int = PER_CLASS_OPTION,
    classes: str = CLASSES_OPTION,
    image_size: int = MEASURE_SIZE_OPTION,
    val_fraction: float = typer.Option(0.2),
    seed: int = typer.Option(0),
    verify: bool = typer.Option(False, "--verify", help="Compare the pick with the runner-up (a short compare, test figures); say whether the pick held."),
    verify_epochs: int = typer.Option(4, help="Epochs per strategy for --verify."),
    out: Path = typer.Option(None, help="Run directories of --verify (default runs/recommend-verify)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Recommend a strategy for DATA from measurements (size, probe accuracy per depth, domain similarity)."""
    from headstart.api import recommend as run_recommend

    rec = run_recommend(data, model=model, per_class=per_class, classes=split_list(classes), image_size=image_size,
                        val_fraction=val_fraction, seed=seed, verify=verify, verify_epochs=verify_epochs, out=out)
    if as_json:
        print_json(rec.to_dict())
        return
    hp = rec.hyperparameters
    k = hp["train_last"]
    extra = f" (the last {k} stage group{'s' if k != 1 else ''})" if k else ""
    console.print(f"[bold]recommended: {rec.strategy}{extra}[/]  (runner-up: {rec.runner_up})")
    for r in rec.reasons:
        console.print(f"  - {r}")
    console.print("learning rates: " + ", ".join(f"{g} {lr:.2g}" for g, lr in hp["group_lrs"].items())
                  + f" · {hp['epochs']} epochs · {hp['image_size']}px · augment {hp['augment']}")
    console.print(f"run it: {rec.command}")
    if rec.verify:
        v = rec.verify
        metric = v["metric"].replace("_", " ")
        for label, r in v["results"].items():
            console.print(f"  verify {label}: test {metric} {r['test']:.3f} ({r['test_low']:.3f}-{r['test_high']:.3f}) "
                          f"after {v['epochs']} epochs, best epoch chosen on val ({r['train_seconds']:.0f}s)")
        console.print(("[green]the pick held[/]: " if v["held"] else "[yellow]the pick did not hold[/]: ") + v["sentence"])


@app.command("models")
def list_models():
    """Registered backbones (any timm or torchvision:NAME model also works)."""
    from headstart.backbones import _REGISTRY

    for name, spec in sorted(_REGISTRY.items()):
        console.print(f"[bold]{name}[/]  {spec.description}")


if __name__ == "__main__":
    app()
