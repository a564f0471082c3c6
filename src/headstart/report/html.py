"""Run directories -> one self-contained report.html (figures inlined: it opens offline, mails as one file).

Two reports, built from the same pieces and reading only what training wrote:
- `write_compare_report(out, summary)`: the controlled experiment — the verdict and why at the top, the
  test figures with their 95% intervals (what was selected on what in small type), learning curves of every
  strategy on shared axes, the frozen/trainable diagram, test confusion matrices, the val predictions of the
  run the comparison stands for (misclassified first), how to reproduce it.
- `write_run_report(run_dir)`: the same for a single `headstart train` run.

Figures are matplotlib PNGs as data: URIs; the diagram is inline SVG; there is no JavaScript.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path

import numpy as np

from headstart.report.diagram import DiagramRow, diagram_row, human, strategy_diagram
from headstart.report.markdown import (badge, cache_text, cell_text, data_name, decision_cells, evidence, findings, ghost_text,
                                       pct, placement_text, pts, results_rows)
from headstart.report.plots import plot_confusion, plot_curves, subplots
from headstart.runs import CONFIG_FILE, HISTORY_FILE, atomic_write_text, best_run, read_history, read_run
from headstart.strategies import Strategy, parse_label, what_trains

GRID_FILE = "val_grid.json"
COLORS = {"scratch": "#e15759", "linear": "#4e79a7", "partial": "#f28e2b", "full": "#59a14f", "gradual": "#b07aa1",
          "lp-ft": "#9c755f"}
VARIANT_COLORS = ["#edc948", "#76b7b2", "#ff9da7", "#bab0ac", "#8cd17d"]  # partial:K, by K


def strategy_color(label: str) -> str:
    """A strategy's colour in every plot and table; partial:K variants get one each."""
    _, k = parse_label(label)
    return VARIANT_COLORS[k % len(VARIANT_COLORS)] if k is not None else COLORS.get(label, "#333")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:24px auto;padding:0 20px;
color:#1d2330;line-height:1.45}
h1{font-size:26px;margin:0 0 14px}h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.winner{background:#fff6ea;border-left:6px solid #f28e2b;padding:14px 18px;border-radius:6px}
.winner .big{font-size:23px;font-weight:650;margin:0 0 6px}.winner p{margin:6px 0;font-size:16px}
.setup{color:#4a5263;font-size:14px;margin:10px 0}
table{border-collapse:collapse;width:100%;font-size:14.5px}th,td{padding:6px 9px;text-align:left;border-bottom:1px solid #e4e7ec}
th{background:#f4f6f9;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.win td{background:#fff6ea;font-weight:600}.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px}
img.fig{max-width:100%;height:auto}.cms{display:flex;flex-wrap:wrap;gap:14px}.cms figure{margin:0;width:270px}
.cms img{width:100%}figcaption{font-size:13px;text-align:center;color:#333}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(104px,1fr));gap:8px}
.grid figure{margin:0;text-align:center;font-size:12px}.grid img{width:96px;height:96px;image-rendering:auto;border:3px solid #59a14f;border-radius:4px}
.grid figure.wrong img{border-color:#e15759}.grid .wrong figcaption{color:#b8282a;font-weight:600}
pre{background:#f4f6f9;padding:10px;border-radius:6px;white-space:pre-wrap;word-break:break-all;font-size:13px}
.note{color:#5a6272;font-size:13px}.evidence{color:#5a6272;font-size:12.5px;margin:6px 0}
.badge{display:inline-block;background:#f28e2b;color:#fff;font-size:.72em;font-weight:700;text-transform:uppercase;
letter-spacing:.04em;padding:2px 7px;border-radius:4px;vertical-align:middle}
.badge.tied{background:#8a94a6}.badge.none{background:#b8282a}
table.decision td{width:42%;vertical-align:top}table.decision td.here{background:#fff6ea;outline:2px solid #f28e2b}
"""


# ------------------------------------------------------------------------------------------------ pieces
def png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_file_uri(draw) -> str:
    """A data: URI of a figure that one of plots.py's functions writes to a file-like object."""
    buf = io.BytesIO()
    draw(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>\n")


def accuracy_bar(mean: float, low: float, high: float, values: list[float], color: str, chance: float | None = None,
                 width: int = 220) -> str:
    """A small SVG: a bar to the mean, a whisker over its 95% interval, a dot per seed, a dashed tick at chance
    (0 to 100% left to right)."""
    x = lambda v: 2 + (width - 4) * min(max(v, 0.0), 1.0)  # noqa: E731
    parts = [f'<svg width="{width}" height="18" viewBox="0 0 {width} 18" role="img" aria-label="{pct(mean)}">',
             f'<rect x="2" y="3" width="{width - 4}" height="12" fill="#eef0f3"/>',
             f'<rect x="2" y="3" width="{x(mean) - 2:.1f}" height="12" fill="{color}" opacity="0.85"/>']
    if chance is not None:
        parts.append(f'<path d="M{x(chance):.1f} 1V17" stroke="#888" stroke-width="1" stroke-dasharray="2 2"/>')
    if high > low:
        lo, hi = x(low), x(high)
        parts.append(f'<path d="M{lo:.1f} 9H{hi:.1f}M{lo:.1f} 5V13M{hi:.1f} 5V13" stroke="#111" stroke-width="1.4"/>')
    parts += [f'<circle cx="{x(v):.1f}" cy="9" r="2.2" fill="#fff" stroke="#111" stroke-width="0.8"/>' for v in values]
    return "".join(parts) + "</svg>"


def mean_curves(histories: list[list[dict]]) -> dict[str, np.ndarray]:
    """Per-epoch means over seeds (runs that stopped early contribute to the epochs they ran)."""
    n = max(len(h) for h in histories)
    out = {}
    for key in ("train_accuracy", "val_accuracy", "train_loss", "val_loss"):
        grid = np.full((len(histories), n), np.nan)
        for i, h in enumerate(histories):
            grid[i, : len(h)] = [r[key] for r in h]
        out[key] = np.nanmean(grid, axis=0)
    out["epoch"] = np.arange(1, n + 1)
    return out


def plot_compare_curves(curves: dict[str, dict[str, np.ndarray]], chance: float | None = None):
    """Val accuracy of every strategy on one axes, then one panel per strategy with train (dashed) and val
    (solid) accuracy and the gap between them shaded: every panel shares both axes."""
    names = list(curves)
    panels = len(names) + 1
    cols = panels if panels <= 4 else 3
    rows = -(-panels // cols)
    fig, axes = subplots(rows, cols, figsize=(3.7 * cols, 3.0 * rows), sharex=True, sharey=True, squeeze=False)
    flat = axes.ravel()
    ax = flat[0]
    for name in names:
        c = curves[name]
        ax.plot(c["epoch"], c["val_accuracy"], "-o", ms=3, color=strategy_color(name), label=name, lw=2)
    ax.set_title("val accuracy, all strategies", fontsize=11)
    ax.legend(fontsize=8.5, loc="lower right")
    for ax, name in zip(flat[1:], names):
        c = curves[name]
        color = strategy_color(name)
        ax.plot(c["epoch"], c["train_accuracy"], "--", color=color, lw=1.6, label="train")
        ax.plot(c["epoch"], c["val_accuracy"], "-", color=color, lw=2.2, label="val")
        train_acc, val_acc = np.asarray(c["train_accuracy"]), np.asarray(c["val_accuracy"])
        ax.fill_between(c["epoch"], val_acc, train_acc, where=train_acc > val_acc, interpolate=True,
                        color="#e15759", alpha=0.15, label="gap (overfitting)")  # val above train is not overfitting
        gap = c["train_accuracy"][-1] - c["val_accuracy"][-1]
        ax.set_title(f"{name}: train vs val (gap {100 * gap:+.1f} pts)", fontsize=11)
        ax.legend(fontsize=8, loc="lower right")
    for ax in flat[len(names) + 1:]:
        ax.set_visible(False)
    for ax in flat[: len(names) + 1]:
        ax.grid(alpha=0.3)
        if chance is not None:
            ax.axhline(chance, color="#999", lw=0.8, ls=":")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[-1, :]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    fig.tight_layout()
    return fig


def grid_html(grid: dict | None) -> str:
    if not grid or not grid.get("images"):
        return '<p class="note">No prediction grid in this run directory.</p>'
    cells = []
    for g in grid["images"]:
        wrong = not g["correct"]
        caption = (f"{escape(g['predicted'])} {g['probability']:.0%}<br><span>true: {escape(g['true'])}</span>" if wrong
                   else f"{escape(g['predicted'])} {g['probability']:.0%}")
        cells.append(f'<figure class="{"wrong" if wrong else "right"}">'
                     f'<img src="data:image/jpeg;base64,{g["thumb"]}" alt="{escape(g["true"])}"><figcaption>{caption}'
                     "</figcaption></figure>")
    head = (f'<p class="note">{grid["n_wrong"]} of {grid["n"]} val images misclassified; shown: the most confident '
            "mistakes first (red), then correct predictions (green), with the predicted label and its probability.</p>")
    return head + f'<div class="grid">{"".join(cells)}</div>'


def reproduce_html(command: str | None, environment: dict, extra: str = "") -> str:
    env = ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in (environment or {}).items())
    return (f"<pre>{escape(command or '(run from the Python API: see config.json)')}</pre>"
            f'<p class="note">{extra}Versions: {env}.</p>')


def write_grid(run_dir: Path, pixels: np.ndarray, labels, logits, classes: list[str], n: int = 24) -> Path:
    """val_grid.json: up to `n` val images as small JPEG thumbnails with their predictions, the most
    confident mistakes first, then correct ones spread over the val set."""
    import torch
    from PIL import Image

    probs = torch.as_tensor(logits).float().softmax(1)
    conf, pred = probs.max(1)
    labels = torch.as_tensor(labels)
    wrong = (pred != labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(conf[i]))
    right = (pred == labels).nonzero().flatten().tolist()
    shown_wrong = wrong[: n - min(len(right), n // 3)]
    n_right = n - len(shown_wrong)
    chosen = shown_wrong + right[:: max(1, len(right) // max(n_right, 1))][:n_right]
    images = []
    for i in chosen:
        thumb = Image.fromarray(np.asarray(pixels[i])).convert("RGB")
        thumb.thumbnail((96, 96))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=88)
        images.append({"index": i, "true": classes[int(labels[i])], "predicted": classes[int(pred[i])],
                       "probability": float(conf[i]), "correct": bool(pred[i] == labels[i]),
                       "thumb": base64.b64encode(buf.getvalue()).decode()})
    path = Path(run_dir) / GRID_FILE
    atomic_write_text(path, json.dumps({"n": int(len(labels)), "n_wrong": len(wrong), "images": images}))
    return path


def read_grid(run_dir: Path) -> dict | None:
    path = Path(run_dir) / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------ compare
def badge_html(word: str) -> str:
    """The verdict's word for a strategy (or a comparison) as a badge: winner, recommended, tied, no winner."""
    if not word:
        return ""
    kind = {"tied": " tied", "no winner": " none"}.get(word, "")
    return f'<span class="badge{kind}">{escape(word)}</span>'


def results_table(summary: dict) -> str:
    metric = summary["metric"].replace("_", " ")
    each = "seed, folds pooled" if summary["setup"].get("folds") else "seed"
    head = (f"<tr><th>strategy</th><th>what trains</th><th>test {metric} (bar: mean, whisker: 95% interval, dots: "
            f"per {each}, dashes: chance)</th><th class='num'>test {metric}</th>"
            "<th class='num'>val acc (selected on)</th><th class='num'>train acc</th>"
            "<th class='num'>gap (train − val)</th><th class='num'>trainable params</th><th class='num'>seconds</th></tr>")
    body = []
    for r in results_rows(summary):
        color = strategy_color(r["strategy"])
        body.append(
            f'<tr class="{"win" if r["winner"] or r["recommended"] else ""}" data-strategy="{escape(r["strategy"])}">'
            f'<td><span class="swatch" style="background:{color}"></span>{escape(r["strategy"])} '
            f'{badge_html(badge(r))}</td><td>{escape(r["trains"])}</td>'
            f"<td>{accuracy_bar(r['test'], r['low'], r['high'], r['per_seed'], color, summary['chance'])}</td>"
            f"<td class='num'>{pct(r['test'])} <small>({pct(r['low'])}–{pct(r['high'])})</small></td>"
            f"<td class='num'>{pct(r['val_best'])}</td><td class='num'>{pct(r['train'])}</td>"
            f"<td class='num'>{100 * r['gap']:+.1f} pts</td><td class='num'>{human(r['params'])}</td>"
            f"<td class='num'>{r['seconds']:.0f}</td></tr>")
    return f'<table id="results"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def decision_html(summary: dict) -> str:
    """The lesson's 2 × 2 with the benchmark's measured winners, this comparison's cell outlined (empty without a
    placement: a summary written before compare measured one)."""
    intro = placement_text(summary)
    if intro is None:
        return ""
    cells = decision_cells(summary)
    word = summary["winner"] or " ≈ ".join(summary.get("tied") or []) or "no winner"
    rows = []
    for size in ("small", "large"):
        tds = "".join(
            f'<td class="here">{escape(cell_text(c["measured"]))}<br><b>this comparison: {escape(word)}</b></td>'
            if c["here"] else f"<td>{escape(cell_text(c['measured']))}</td>"
            for c in cells if c["size"] == size)
        rows.append(f"<tr><th>{size} data</th>{tds}</tr>")
    return ("<h2>Where this data sits in the lesson's decision table</h2>"
            f'<p class="note">{escape(intro)}</p><table class="decision" id="decision"><thead><tr><th></th>'
            "<th>similar to ImageNet</th><th>different from ImageNet</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def compare_html(out: Path, summary: dict) -> str:
    setup = summary["setup"]
    seeds = setup["seeds"]
    facts = findings(summary)
    runs_of = {name: [out / r["run_dir"] for r in summary["strategies"][name]["runs"]] for name in setup["strategies"]}
    curves = {name: mean_curves([read_history(d / HISTORY_FILE) for d in dirs]) for name, dirs in runs_of.items()}
    chance = 1 / len(setup["classes"])
    diagram_rows = [diagram_row(json.loads((runs_of[name][0] / CONFIG_FILE).read_text()), label=name)
                    for name in summary["ranking"]]  # labelled as compared: partial:3 and partial side by side
    confusions = []
    pooled = "summed over seeds and folds" if setup.get("folds") else "summed over seeds"
    for name in summary["ranking"]:
        cm = sum(np.asarray(read_run(d)["test_metrics"]["confusion_matrix"]) for d in runs_of[name])
        acc = np.trace(cm) / cm.sum()
        uri = png_file_uri(lambda buf, cm=cm, name=name, acc=acc: plot_confusion(
            cm.tolist(), setup["classes"], buf, f"{name} · test accuracy {acc:.1%}"))
        confusions.append(f"<figure>{img(uri, f'test confusion matrix of {name}')}<figcaption>{escape(name)}"
                          f"{f' ({pooled})' if len(runs_of[name]) > 1 else ''}</figcaption></figure>")
    chosen_dir = best_run(out, summary)
    chosen = read_run(chosen_dir)
    sizes = (f"{setup['n_test']} images in {setup['folds']} folds" if setup.get("folds") else
             f"{setup['n_train']} train / {setup['n_val']} val / {setup['n_test']} test images")
    word = "winner" if summary["winner"] else "tied" if summary["recommended"] else "no winner"
    body = [
        f"<h1>Which fine-tuning strategy works on {escape(data_name(setup['data']))}?</h1>",
        f'<div class="winner"><p class="big">{badge_html(word)} {escape(facts[0])}</p>',
        *[f"<p>{escape(f)}</p>" for f in facts[1:]], "</div>",
        f'<p class="setup">Same for every strategy: {escape(setup["model"])} at {setup["image_size"]}px · '
        f'{sizes} ({escape(", ".join(setup["classes"]))}) · '
        f'{setup["epochs"]} epochs · augmentation <b>{escape(setup["augment"])}</b> · seeds '
        f'{escape(", ".join(map(str, seeds)))}{escape(ghost_text(setup))}. '
        f'{"Otherwise only" if ghost_text(setup) else "Only"} the starting point and what is frozen differ.</p>',
        "<h2>Test figures</h2>", results_table(summary),
        f'<p class="evidence" id="evidence"><small>{escape(evidence(summary))}</small></p>',
        '<p class="note">Intervals: 95%, over the test images and the seeds (stats.py). Val accuracy: the best '
        "epoch's, on the very images that chose it, so it flatters. Train accuracy and gap: the last epoch. A large "
        "gap means the model learned its training images rather than the task. Seconds: training time, decoding "
        "excluded; a frozen prefix whose features an earlier run on the same images cached costs nothing here. "
        f"{escape(cache_text(summary))}</p>",
        "<h2>Learning curves</h2>",
        img(png_uri(plot_compare_curves(curves, chance)), "learning curves of every strategy"),
        f'<p class="note">Means over {len(seeds)} seed(s){" and the folds" if setup.get("folds") else ""}, on train '
        f"and val (the images the best epoch is chosen on). Dotted line: chance ({chance:.0%}). "
        "Shaded: train − val, the overfitting gap.</p>",
        "<h2>What trains under each strategy</h2>",
        diagram_or_note(diagram_rows),
        "<h2>Test confusion matrices</h2>", f'<div class="cms">{"".join(confusions)}</div>',
        f"<h2>Val predictions of the run this comparison stands for ({escape(chosen['strategy'])}, seed "
        f"{chosen['seed']}, the best on val)</h2>",
        grid_html(read_grid(chosen_dir)),
        decision_html(summary),
        "<h2>Reproduce</h2>",
        reproduce_html(setup.get("command"), setup.get("environment"),
                       f"Seeds {', '.join(map(str, seeds))}; data split seed {setup.get('data_seed', 0)}; roles: "
                       f"{escape(setup.get('roles') or '')}; every run's config.json, history.csv, "
                       "test_predictions.csv and weights are under runs/. "),
    ]
    title = (f"{summary['winner']} wins" if summary["winner"] else
             f"tied, {summary['recommended']} recommended" if summary["recommended"] else "no strategy beats chance")
    return page(f"headstart compare: {title}", "\n".join(body))


def write_compare_report(out: str | Path, summary: dict) -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, compare_html(Path(out), summary))
    return path


# ------------------------------------------------------------------------------------------------ one run
def diagram_or_note(rows: list[DiagramRow | None]) -> str:
    """The frozen/trainable diagram of the rows the runs recorded, or a note for runs too old to have them."""
    recorded = [r for r in rows if r is not None]
    if not recorded:
        return "<p>(not recorded: these runs predate the diagram's record in config.json)</p>"
    return strategy_diagram(recorded)


def run_figures(run: dict) -> tuple[str, str]:
    """The headline of a single run and the small print under it: the test figure with its interval, or plainly
    that there is none (a run without a test split, or one recorded before test figures existed)."""
    val_best = run.get("val_accuracy_best", run.get("best_val_accuracy"))
    selection = f"val accuracy {pct(val_best)} (epoch {run['best_epoch']} of {run['epochs']}, the selection figure)"
    if run.get("test_metric"):
        metric, interval = run["test_metric"], run["test_interval"]
        headline = (f"test {metric.replace('_', ' ')} {pct(run['test_' + metric])} (95% interval "
                    f"{pct(interval['low'])}–{pct(interval['high'])})")
        small = f"{run.get('evidence', '')}. The interval covers the test images, not the seed. Also: {selection}."
        if metric == "balanced_accuracy":
            small += (" Balanced accuracy (the mean of per-class recalls): the classes are imbalanced, and plain "
                      f"accuracy ({pct(run['test_accuracy'])}) would reward leaning toward the large ones.")
        return headline, small
    if "no_test" in run:
        return f"{selection}; no test figure", run["no_test"] + "."
    return (f"{selection}; no test figure",
            "This run was recorded before headstart kept test figures: its val accuracy chose the best epoch, so it "
            "is optimistic. Train again with a test split (--test-fraction F, --val-as-test or a test/ folder) for a "
            "figure nothing was selected on.")


def imbalance_note(run: dict) -> str:
    if run.get("selected_on") != "val_balanced_accuracy":
        return ""
    counts = run.get("class_counts") or {}
    shown = ", ".join(f"{c} {n}" for c, n in counts.items())
    how = {"weighted": "a class-weighted loss", "sampler": "class-balanced batches", "none": "nothing (--balance none)"}
    return (f'<p class="note">The training classes are imbalanced ({escape(shown)}): the best epoch was chosen on val '
            f"balanced accuracy, which plain accuracy would flatter by favouring the large classes, and training "
            f"countered the imbalance with {how.get(run.get('balance'), run.get('balance'))}.</p>")


def run_html(run_dir: Path) -> str:
    run = read_run(run_dir)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    history = read_history(run_dir / HISTORY_FILE)
    last = history[-1]
    gap = last["train_accuracy"] - last["val_accuracy"]
    name = run["strategy"]
    diagram = diagram_or_note([diagram_row(config)])
    curves = png_file_uri(lambda buf: plot_curves(history, buf, f"{run['model']} · {name}"))
    shown, role = (run["test_metrics"], "test") if run.get("test_metrics") else (run["val_metrics"], "val")
    confusion = png_file_uri(lambda buf: plot_confusion(shown["confusion_matrix"], run["classes"], buf,
                                                        f"{role} accuracy {shown['accuracy']:.3f}"))
    verdict = ("it overfits: consider stronger augmentation, fewer trainable layers or more images" if gap > 0.1
               else "train and val agree: little overfitting")
    headline, small = run_figures(run)
    n_test = f" / {run['n_test']} test" if run.get("n_test") else ""
    body = [
        f"<h1>{escape(name)} on {escape(data_name(config.get('data')))}</h1>",
        f'<div class="winner"><p class="big">{escape(headline)}</p><p>Trains '
        f'{escape(what_trains(Strategy.from_dict(config["strategy"])))}. Last epoch: train '
        f'{pct(last["train_accuracy"])}, val {pct(last["val_accuracy"])}, a {pts(gap)} gap: {verdict}.'
        f'{" Interrupted: this is the best checkpoint so far." if run.get("interrupted") else ""}</p>'
        f'<p class="evidence" id="evidence"><small>{escape(small)}</small></p></div>',
        imbalance_note(run),
        f'<p class="setup">{escape(run["model"])} at {run["image_size"]}px · {run["n_train"]} train / {run["n_val"]} '
        f'val{n_test} images · {escape(", ".join(run["classes"]))} · {human(run["trainable_params_max"])} of '
        f'{human(run["total_params"])} parameters train · {run["train_seconds"]:.0f} s · seed {run["seed"]}</p>',
        "<h2>Learning curves</h2>", img(curves, "learning curves"),
        "<h2>What trains</h2>", diagram,
        f"<h2>Confusion matrix ({role})</h2>", f'<div class="cms"><figure>{img(confusion, "confusion matrix")}</figure></div>',
        "<h2>Val predictions</h2>", grid_html(read_grid(run_dir)),
        "<h2>Reproduce</h2>", reproduce_html(config.get("command"), run.get("environment"),
                                             f"Roles: {escape(run.get('roles') or config.get('roles') or 'not recorded')}. "),
    ]
    return page(f"headstart: {name} · {headline}", "\n".join(body))


def write_run_report(run_dir: str | Path) -> Path:
    """report.html of one run, from its records."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    atomic_write_text(path, run_html(run_dir))
    return path
