"""The comparison as text (report.md), for terminals and notebooks, and the findings both reports share.

`findings(summary)` turns the numbers of summary.json into plain sentences: who won and by how much,
then why, in words a newcomer can follow. Every sentence is computed from the summary; none is canned.
"""

from __future__ import annotations

from pathlib import Path

from headstart.report.diagram import human
from headstart.runs import atomic_write_text

def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pts(x: float) -> str:
    """A difference of accuracies in percentage points."""
    return f"{100 * x:.1f} points"


def headline(summary: dict) -> str:
    table, winner = summary["strategies"], summary["winner"]
    w = table[winner]
    seeds = w["n_seeds"]
    spread = f" ± {pct(w['val_accuracy_std'])}" if seeds > 1 else ""
    text = (f"{winner} wins with {pct(w['val_accuracy_mean'])}{spread} mean val accuracy over {seeds} "
            f"seed{'s' if seeds > 1 else ''}")
    if "runner_up" in summary:
        text += f", {pts(summary['margin'])} ahead of {summary['runner_up']}"
        if summary.get("margin_exceeds_spread") is False:
            text += " (less than the seed-to-seed spread: treat the two as tied)"
        elif seeds == 1 and summary["margin"] < 0.02:
            text += " (one seed only: a difference this small may be noise; run more seeds)"
    return text + "."


def findings(summary: dict) -> list[str]:
    """The headline, then the reasons, each one sentence computed from the summary's numbers."""
    table, winner = summary["strategies"], summary["winner"]
    w = table[winner]
    n_train = summary.get("setup", {}).get("n_train")
    images = f"{n_train} training images" if n_train else "the same training images"
    out = [headline(summary)]
    if "scratch" in table and winner != "scratch" and w["pretrained"]:
        s = table["scratch"]
        diff = w["val_accuracy_mean"] - s["val_accuracy_mean"]
        scratch_numbers = (f"scratch reaches {pct(s['final_train_accuracy_mean'])} on its own training images and "
                           f"{pct(s['val_accuracy_mean'])} on val")
        if diff >= 0.10:
            reason = (f"Starting from ImageNet weights is what makes the difference: {winner} beats training from "
                      f"scratch by {pts(diff)} on {images}")
            if s["gap_mean"] > 0.15 and s["final_train_accuracy_mean"] > 0.75:
                reason += (f"; scratch fits its training images ({pct(s['final_train_accuracy_mean'])}) far better than "
                           f"new ones ({pct(s['val_accuracy_mean'])}), a {pts(s['gap_mean'])} gap: it memorises instead "
                           "of learning features that carry over.")
            else:
                reason += f"; from random weights they are too few to learn visual features: {scratch_numbers}."
        elif diff >= 0.02:
            reason = f"Pretrained weights help: {winner} beats training from scratch by {pts(diff)} ({scratch_numbers})."
        else:
            reason = (f"These classes are easy even from random weights ({scratch_numbers}, {pts(diff)} behind); "
                      f"what pretraining buys here is time: {w['wall_seconds_mean']:.0f} s for {winner} against "
                      f"{s['wall_seconds_mean']:.0f} s for scratch.")
        out.append(reason)
    elif winner == "scratch":
        out.append("Training from scratch won: these images may be far from ImageNet's photos, or the pretrained "
                   "strategies need more epochs or another learning rate.")
    if "linear" in table and winner not in ("linear", "scratch"):
        lin = table["linear"]
        diff = w["val_accuracy_mean"] - lin["val_accuracy_mean"]
        noise = max(w["val_accuracy_std"], lin["val_accuracy_std"], 0.01)
        trains = w.get("trains", winner)
        if diff > noise:
            out.append(f"Training {trains} adds {pts(diff)} over frozen features (linear, "
                       f"{pct(lin['val_accuracy_mean'])}): the top layers adapt to this data.")
        else:
            out.append(f"Training {trains} is barely better than frozen features (linear, "
                       f"{pct(lin['val_accuracy_mean'])}, {pts(diff)} behind, within the noise): on these images "
                       "the ImageNet features already do most of the work.")
    elif winner == "linear":
        others = [s for s in table if s not in ("linear", "scratch")]
        if others:
            best = max(others, key=lambda s: table[s]["val_accuracy_mean"])
            out.append(f"Frozen ImageNet features were enough: training more of the network ({best}, "
                       f"{pct(table[best]['val_accuracy_mean'])}) did not beat them on {images}.")
    pretrained = [s for s in table if table[s]["pretrained"]]
    if len(pretrained) > 1:
        worst = max(pretrained, key=lambda s: table[s]["gap_mean"])
        if table[worst]["gap_mean"] > 0.03:
            out.append(f"Most overfitting among pretrained strategies: {worst} (train {pct(table[worst]['final_train_accuracy_mean'])}"
                       f" vs val {pct(table[worst]['val_accuracy_mean'])} in the last epoch).")
    return out


def data_name(source: str | None) -> str:
    """A short name for a data source: 'fashion-mnist (/usr/share/...)' -> 'fashion-mnist', a path -> its folder."""
    from pathlib import PurePath

    source = str(source or "")
    if " (" in source:
        return source.split(" (", 1)[0]
    return PurePath(source).name or source


def results_rows(summary: dict) -> list[dict]:
    """The accuracy table as records, best strategy first (shared by report.md and report.html)."""
    rows = []
    for name in summary["ranking"]:
        s = summary["strategies"][name]
        rows.append({
            "strategy": name, "trains": s.get("trains", s["description"]),
            "val": s["val_accuracy_mean"], "val_std": s["val_accuracy_std"],
            "train": s["final_train_accuracy_mean"], "gap": s["gap_mean"], "gap_std": s["gap_std"],
            "params": s["trainable_params_mean"], "seconds": s["wall_seconds_mean"],
            "per_seed": [r["val_accuracy"] for r in s["runs"]], "winner": name == summary["winner"],
        })
    return rows


def compare_markdown(summary: dict) -> str:
    setup = summary["setup"]
    lines = [f"# Which fine-tuning strategy works on {data_name(setup['data'])}?", ""]
    lines += [f"**{findings(summary)[0]}**", ""] + [f"- {f}" for f in findings(summary)[1:]] + [""]
    lines += [f"Data: {setup['data']}. {setup['model']} at {setup['image_size']}px · {setup['n_train']} train / {setup['n_val']} val images · "
              f"classes {', '.join(setup['classes'])} · {setup['epochs']} epochs · augmentation `{setup['augment']}` "
              f"for every strategy · seeds {', '.join(map(str, setup['seeds']))}", ""]
    lines += ["| strategy | what trains | val accuracy (mean ± std) | per seed | train acc | gap (train − val) | "
              "trainable params | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in results_rows(summary):
        name = f"**{r['strategy']}**" if r["winner"] else r["strategy"]
        spread = f" ± {pct(r['val_std'])}" if len(r["per_seed"]) > 1 else ""
        lines.append(f"| {name} | {r['trains']} | {pct(r['val'])}{spread} | "
                     f"{' '.join(f'{v:.3f}' for v in r['per_seed'])} | {pct(r['train'])} | {pts(r['gap'])} | "
                     f"{human(r['params'])} | {r['seconds']:.0f} |")
    lines += ["", "Val accuracy: the best epoch's (its weights are the ones kept). Train accuracy and the gap: the "
              "last epoch's. Std: over seeds (n − 1). Seconds: training time, decoding excluded; a frozen prefix whose "
              "features an earlier run on the same images cached costs nothing here.", "", "## Reproduce", "", "```",
              setup.get("command") or "(run from the Python API)", "```", ""]
    env = setup.get("environment") or {}
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append("")
    return "\n".join(lines)


def write_compare_markdown(out: str | Path, summary: dict) -> Path:
    path = Path(out) / "report.md"
    atomic_write_text(path, compare_markdown(summary))
    return path
