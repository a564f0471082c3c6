"""The comparison as text (report.md), for terminals and notebooks, and the findings both reports share.

`findings(summary)` turns the numbers of summary.json into plain sentences: the verdict (a winner, a tie and the
cheapest of it, or nothing above chance), then why, in words a newcomer can follow. Every figure they quote is
a test figure (images nothing was selected on); every sentence is computed from the summary; none is canned.
"""

from __future__ import annotations

from pathlib import Path

from headstart.analysis.recommend import track_record
from headstart.report.diagram import human
from headstart.runs import atomic_write_text

def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pts(x: float) -> str:
    """A difference of accuracies in percentage points."""
    return f"{100 * x:.1f} points"


def headline(summary: dict) -> str:
    """The verdict, as stats.verdict put it: who wins, or which strategies are tied and which of them is the
    cheapest, or that nothing beats chance; always on the test images."""
    sentence = summary["sentence"]
    return sentence[0].upper() + sentence[1:] + "."


def test_of(summary: dict, name: str) -> float:
    return summary["strategies"][name]["test"]["estimate"]


def difference(summary: dict, a: str, b: str) -> tuple[float, dict | None]:
    """test(a) − test(b), with the verdict's paired interval when one of them is the best strategy."""
    differences = summary["verdict"]["differences"]
    if a == summary["best"] and b in differences:
        return differences[b]["difference"], differences[b]
    if b == summary["best"] and a in differences:
        d = differences[a]
        return -d["difference"], {**d, "difference": -d["difference"], "low": -d["high"], "high": -d["low"]}
    return test_of(summary, a) - test_of(summary, b), None


def _interval_phrase(d: dict | None) -> str:
    return f" (95% interval {100 * d['low']:.1f} to {100 * d['high']:.1f} points)" if d else ""


def ghost_text(setup: dict) -> str:
    """The one setting that differs between strategies, when it was used: ghost batch norm for those whose BatchNorm
    trains (empty otherwise)."""
    ghost = setup.get("ghost_batch_norm")
    if not ghost:
        return ""
    return (f" · {', '.join(ghost['strategies'])}: BatchNorm over parts of {ghost['images']} images of each batch "
            "(ghost batch norm, --ghost-bn)")


def findings(summary: dict) -> list[str]:
    """The verdict, then the reasons, each one sentence computed from the summary's test figures."""
    table, best = summary["strategies"], summary["best"]
    metric = summary["metric"].replace("_", " ")
    n_train = summary.get("setup", {}).get("n_train")
    images = f"{n_train} training images" if n_train else "the same training images"
    out = [headline(summary)] + failures(summary)
    if not set(summary["verdict"]["above_chance"]):
        return out + [f"Every strategy's test {metric} interval reaches down to chance ({pct(summary['chance'])}): "
                      "whatever the val figures say, nothing here has learned something that carries to new images."]
    pretrained = [s for s in table if table[s]["pretrained"]]
    top = max(pretrained, key=lambda s: test_of(summary, s)) if pretrained else None
    if "scratch" in table and top is not None:
        s = table["scratch"]
        diff, d = difference(summary, top, "scratch")
        scratch_numbers = (f"scratch reaches {pct(s['final_train_accuracy_mean'])} on its own training images and "
                           f"{pct(test_of(summary, 'scratch'))} on the test images")
        if diff >= 0.10:
            reason = (f"Starting from ImageNet weights is what makes the difference: {top} beats training from "
                      f"scratch by {pts(diff)}{_interval_phrase(d)} on {images}")
            if s["gap_mean"] > 0.15 and s["final_train_accuracy_mean"] > 0.75:
                reason += (f"; scratch fits its training images ({pct(s['final_train_accuracy_mean'])}) far better than "
                           f"new ones ({pct(test_of(summary, 'scratch'))}), a {pts(s['gap_mean'])} gap to val: it "
                           "memorises instead of learning features that carry over.")
            else:
                reason += f"; from random weights they are too few to learn visual features: {scratch_numbers}."
        elif diff >= 0.02:
            reason = (f"Pretrained weights help: {top} beats training from scratch by {pts(diff)}{_interval_phrase(d)} "
                      f"({scratch_numbers}).")
        elif diff >= 0:
            reason = (f"These classes are easy even from random weights ({scratch_numbers}, {pts(diff)} behind); "
                      f"what pretraining buys here is time: {table[top]['wall_seconds_mean']:.0f} s for {top} against "
                      f"{s['wall_seconds_mean']:.0f} s for scratch.")
        else:
            reason = ""
        if reason:
            out.append(reason)
    if best == "scratch":
        out.append("Training from scratch scored best: these images may be far from ImageNet's photos, or the "
                   "pretrained strategies need more epochs or another learning rate.")
    if "linear" in table and top not in (None, "linear"):
        diff, d = difference(summary, top, "linear")
        trains = table[top].get("trains", top)
        clear = d is not None and d["low"] > 0
        if clear:
            out.append(f"Training {trains} adds {pts(diff)}{_interval_phrase(d)} over frozen features (linear, "
                       f"{pct(test_of(summary, 'linear'))}): the top layers adapt to this data.")
        else:
            out.append(f"Training {trains} is not clearly better than frozen features (linear, "
                       f"{pct(test_of(summary, 'linear'))}, {pts(diff)} behind{_interval_phrase(d)}): on these "
                       "images the ImageNet features already do most of the work.")
    elif top == "linear":
        others = [s for s in pretrained if s != "linear"]
        if others:
            runner = max(others, key=lambda s: test_of(summary, s))
            out.append(f"Frozen ImageNet features were enough: training more of the network ({runner}, "
                       f"{pct(test_of(summary, runner))}) did not beat them on {images}.")
    if len(pretrained) > 1:
        worst = max(pretrained, key=lambda s: table[s]["gap_mean"])
        if table[worst]["gap_mean"] > 0.03:
            out.append(f"Most overfitting among pretrained strategies: {worst} (train "
                       f"{pct(table[worst]['final_train_accuracy_mean'])} vs val "
                       f"{pct(table[worst]['final_train_accuracy_mean'] - table[worst]['gap_mean'])} in the last epoch).")
    return out


def failures(summary: dict) -> list[str]:
    """Runs that failed (compare records them and goes on): which, why, and what was left out of the verdict."""
    failed = summary.get("failed") or []
    if not failed:
        return []
    cells = "; ".join(f"{f['strategy']} seed {f['seed']}" + (f" fold {f['fold']}" if f.get("fold") else "")
                      + f": {f['error']}" for f in failed)
    return [f"{len(failed)} run{'s' if len(failed) > 1 else ''} failed ({cells}); left out of the verdict: "
            f"{', '.join(summary.get('left_out') or [])}. Run the same command again to retry them."]


def evidence(summary: dict) -> str:
    """What was selected on what, for the small print under the table."""
    setup = summary.get("setup", {})
    note = setup.get("evidence", "")
    metric = summary["metric"].replace("_", " ")
    why = (f" The figures are {metric}: the {'training' if _train_imbalanced(summary) else 'test'} classes are "
           "imbalanced, and plain accuracy would reward leaning toward the large ones."
           if summary["metric"] == "balanced_accuracy" else "")
    return (note[0].upper() + note[1:] + "." if note else "") + why


def _train_imbalanced(summary: dict) -> bool:
    return summary.get("selected_on") == "val_balanced_accuracy"


def data_name(source: str | None) -> str:
    """A short name for a data source: 'fashion-mnist (/usr/share/...)' -> 'fashion-mnist', a path -> its folder."""
    from pathlib import PurePath

    source = str(source or "")
    if " (" in source:
        return source.split(" (", 1)[0]
    return PurePath(source).name or source


def results_rows(summary: dict) -> list[dict]:
    """The accuracy table as records, best test figure first (shared by report.md, report.html and the CLI)."""
    rows = []
    for name in summary["ranking"]:
        s = summary["strategies"][name]
        rows.append({
            "strategy": name, "trains": s.get("trains", s["description"]),
            "test": s["test"]["estimate"], "low": s["test"]["low"], "high": s["test"]["high"],
            "per_seed": s["test_per_seed"], "val_best": s["val_accuracy_best_mean"],
            "train": s["final_train_accuracy_mean"], "gap": s["gap_mean"], "gap_std": s["gap_std"],
            "params": s["trainable_params_mean"], "seconds": s["wall_seconds_mean"],
            "winner": name == summary["winner"], "recommended": name == summary["recommended"],
            "tied": name in summary["tied"],
        })
    return rows


def badge(row: dict) -> str:
    """What the verdict says of a strategy, in a word: winner, recommended (cheapest of the tied), tied."""
    return "winner" if row["winner"] else "recommended" if row["recommended"] else "tied" if row["tied"] else ""


def cache_text(summary: dict) -> str:
    """What the cells computed once and shared (decoded images, frozen features), or '' for runs without that
    record: the experiment's cost depends on it as much as on the strategies."""
    cache = summary.get("cache")
    if not cache:
        return ""
    return (f"Computed once and shared: the {cache['runs']} runs built {cache['computed']} cache entries (decoded "
            f"images, frozen features; {cache['seconds_computed']:.0f} s) and read {cache['reused']} back instead "
            f"of computing them again (their builders had spent {cache['seconds_saved']:.0f} s); each run's list is "
            "in summary.json (`cache`).")


def compare_markdown(summary: dict) -> str:
    setup = summary["setup"]
    metric = summary["metric"].replace("_", " ")
    runs = "folds" if setup.get("folds") else "seed"
    lines = [f"# Which fine-tuning strategy works on {data_name(setup['data'])}?", ""]
    lines += [f"**{findings(summary)[0]}**", ""] + [f"- {f}" for f in findings(summary)[1:]] + [""]
    sizes = (f"{setup['n_test']} images in {setup['folds']} folds" if setup.get("folds") else
             f"{setup['n_train']} train / {setup['n_val']} val / {setup['n_test']} test images")
    lines += [f"Data: {setup['data']}. {setup['model']} at {setup['image_size']}px · {sizes} · "
              f"classes {', '.join(setup['classes'])} · {setup['epochs']} epochs · augmentation `{setup['augment']}` "
              f"for every strategy · seeds {', '.join(map(str, setup['seeds']))}{ghost_text(setup)}", ""]
    shared = cache_text(summary)
    lines += [shared, ""] if shared else []
    lines += [f"| strategy | what trains | test {metric} (95% interval) | per {runs.rstrip('s')} | "
              "val accuracy (best epoch, selected on) | train acc | gap (train − val) | trainable params | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results_rows(summary):
        mark = badge(r)
        name = f"**{r['strategy']}**" if r["winner"] or r["recommended"] else r["strategy"]
        lines.append(f"| {name}{f' ({mark})' if mark else ''} | {r['trains']} | {pct(r['test'])} "
                     f"({pct(r['low'])}–{pct(r['high'])}) | {' '.join(f'{v:.3f}' for v in r['per_seed'])} | "
                     f"{pct(r['val_best'])} | {pct(r['train'])} | {pts(r['gap'])} | {human(r['params'])} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"<small>{evidence(summary)} Intervals: 95%, over the test images and the seeds (stats.py). "
              "Val accuracy is the best epoch's on the images that chose it, so it flatters; train accuracy and the "
              "gap are the last epoch's. Seconds: training time, decoding excluded; a frozen prefix whose features "
              "an earlier run on the same images cached costs nothing here.</small>", "",
              f"Roles: {setup.get('roles', '')}", "", *decision_markdown(summary), "## Reproduce", "", "```",
              setup.get("command") or "(run from the Python API)", "```", ""]
    env = setup.get("environment") or {}
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the lesson's decision table
def decision_cells(summary: dict) -> list[dict]:
    """The lesson's 2 × 2 (size × similarity to ImageNet) as the recommend benchmark measured it, cell by cell,
    with `here` marking the cell this comparison's data falls in (compare measures it: setup's placement)."""
    table = track_record()["decision_table"]
    here = (summary["setup"].get("placement") or {}).get("cell")
    return [{"key": key, "size": size, "side": side, "here": key == here, "measured": table.get(key)}
            for size in ("small", "large") for side in ("similar", "different")
            for key in [f"{size} data, {side} to ImageNet"]]


def cell_text(measured: dict | None) -> str:
    """What the benchmark found in one cell, in a line."""
    if not measured:
        return "no benchmark task fell here"
    least = measured["least_regret"]  # all strategies at the least, cheapest first: a tie is not hidden
    best = ", ".join(f"{s} ×{n}" for s, n in measured["best"].items())
    n = len(measured["tasks"])
    return (f"best: {best} (of {n} task{'s' if n != 1 else ''}); least mean regret "
            f"({measured['mean_regret'][least[0]]:.1f} pts): {', '.join(least)}")


def placement_text(summary: dict) -> str | None:
    """Where this comparison's data sits in the lesson's 2 × 2, with the measurements that put it there."""
    placed = summary["setup"].get("placement")
    if not placed:
        return None
    record = track_record()
    high = placed["high_level_similarity"]
    similarity = ("similarity to ImageNet not measured (no BatchNorm statistics, or random weights)" if high is None
                  else f"high-level similarity to ImageNet {high:.2f} (the table calls under {record['different_below']} "
                  "different)")
    return (f"This data: {placed['images_per_class']:.0f} training images per class (the table calls under "
            f"{record['small_per_class']} small), {similarity}: the cell '{placed['cell']}'. The benchmark behind "
            f"`recommend` ({record['tasks']} tasks from {len(record['datasets'])} datasets, "
            "docs/recommend.md) measured in each cell:")


def decision_markdown(summary: dict) -> list[str]:
    intro = placement_text(summary)
    if intro is None:
        return []
    lines = ["## Where this data sits in the lesson's decision table", "", intro, "",
             "| | similar to ImageNet | different from ImageNet |", "|---|---|---|"]
    cells = decision_cells(summary)
    for size in ("small", "large"):
        row = [c for c in cells if c["size"] == size]
        lines.append(f"| {size} data | " + " | ".join(
            ("**this data** · " if c["here"] else "") + cell_text(c["measured"]) for c in row) + " |")
    return lines + [""]


def write_compare_markdown(out: str | Path, summary: dict) -> Path:
    path = Path(out) / "report.md"
    atomic_write_text(path, compare_markdown(summary))
    return path
