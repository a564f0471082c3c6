"""The recommend benchmark: does `recommend` pick a strategy as well as running every strategy would?

    PYTHONPATH=src .venv/bin/python bench/recommend.py run [--tasks T1,T2] [--size 96] [--epochs 6] [--seeds 0,1,2]
    PYTHONPATH=src .venv/bin/python bench/recommend.py table

`run` works through the tasks (a dataset × a training size, `TASKS`). For each it asks `recommend` first (cold,
timed: what a user would run before deciding), on exactly the train and val images `compare` will use — never the
test images — and then runs `compare` over `STRATEGIES` × seeds under the evidence protocol (best epoch chosen on
val; every figure on test images nothing was selected on; the verdict's tied set). One JSON per task goes to
`bench/results/recommend/<task>.json`. Finished runs are reused by `compare` and finished tasks are skipped, so
the benchmark can be stopped (Ctrl-C) and resumed with the same command.

`table` reads those JSONs and scores policies by regret: the best strategy's mean test figure minus the policy's
pick's, in points, and 0 when the pick is in the verdict's tied set (a difference the test images cannot tell
from zero is not a regret). Policies: `recommend`, whose cell rule (size × one feature measurement, four cells, a
strategy each) is fitted here and scored leave-one-dataset-out (fitted without the dataset it is scored on); the
hand-written rules recommend had before the benchmark, as they picked at run time; every fixed strategy (always
linear, partial:1, partial, full, gradual, lp-ft); a size-only rule in the style of BiT's HyperRule; and the
oracle. It writes `bench/results/recommend/table.json`, `decision_table.json` (the lesson's 2 × 2: size ×
similarity to ImageNet, with the measured winners), `docs/recommend.md`, and the rule fitted on every task with its
record, which ships with headstart: `src/headstart/analysis/track_record.json`.

The strategy choice is what is benchmarked: every strategy gets the same epochs, image size and augmentation
(recommend's own hyperparameters, e.g. more epochs for small data, are not used here).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from headstart.analysis.recommend import (DIFFERENT, MEASURES, SMALL_PER_CLASS, TRACK_RECORD, CellRule, decide,
                                          lesson_cell, pick_label)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "recommend"
DOCS = HERE.parent / "docs" / "recommend.md"
SHARED = HERE.parent.parent / "shared" / "data"

STRATEGIES = ("scratch", "linear", "partial:1", "partial", "full", "gradual", "lp-ft")


@dataclass(frozen=True)
class Task:
    """One benchmark task: a dataset at one training size, judged under one protocol."""

    dataset: str  # a folder under ../shared/data, or a built-in name
    per_class: int | None  # training images per class (None: all there are)
    protocol: str  # "val-as-test": the shipped val/ is test; "shipped": the data has a test split; "folds": 5-fold CV
    classes: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.per_class or 'all'}"

    @property
    def source(self) -> str:
        return self.dataset if self.protocol == "shipped" else str(SHARED / self.dataset)


FASHION_TOPS = ("t-shirt", "pullover", "coat", "shirt")  # the four classes Fashion-MNIST confuses most
# (protocol, training sizes): dtd-7 and rsscn7 ship 6 and 5 val images per class, too few to test on, so
# they are cross-validated; the rest test on their shipped val/ (or Fashion-MNIST's official test set)
DATASETS: dict[str, tuple[str, tuple[int | None, ...], tuple[str, ...] | None]] = {
    "hymenoptera": ("val-as-test", (10, 50, None), None),
    "cifar10-cat-dog-horse": ("val-as-test", (10, 50, 200), None),
    "fashion-mnist": ("shipped", (10, 50, 200), FASHION_TOPS),
    "clothing-small": ("val-as-test", (10, None), None),
    "pacs-sketch": ("val-as-test", (10, 50, None), None),
    "dtd-7": ("folds", (10, None), None),
    "fer2013": ("val-as-test", (10, 50, None), None),  # 200/class is all it has, less val
    "rsscn7": ("folds", (10, None), None),
    "blood-cells-pbc": ("val-as-test", (10, 50, None), None),
}
TASKS = [Task(name, n, protocol, classes) for name, (protocol, sizes, classes) in DATASETS.items() for n in sizes]
FOLDS = 5
VAL_PER_CLASS = 50  # selection needs a val set, not a large one: at most 50 per class keeps the runs cheap


# --- run --------------------------------------------------------------------------------------------------------


def split_arguments(task: Task) -> dict:
    """The arguments `compare` and `compare.experiment_splits` share for this task."""
    return {"per_class": task.per_class, "val_per_class": VAL_PER_CLASS, "classes": list(task.classes or []) or None,
            "val_as_test": task.protocol == "val-as-test", "folds": FOLDS if task.protocol == "folds" else None,
            "test_fraction": 0.0}


def run_task(task: Task, *, size: int, epochs: int, seeds: list[int], work: Path, cache_dir: Path | None) -> dict:
    """recommend (timed, cold), then compare; the record both leave, as the task's JSON."""
    from headstart.analysis.recommend import measure_and_decide
    from headstart.compare import compare, experiment_splits
    from headstart.train import TrainConfig

    args = split_arguments(task)
    splits = experiment_splits(task.source, args["folds"], val_fraction=0.2, data_seed=0, classes=args["classes"],
                               per_class=task.per_class, val_per_class=VAL_PER_CLASS,
                               test_fraction=0.0, val_as_test=args["val_as_test"])
    start = time.perf_counter()
    # the first fold's train and val stand for the data a user has before deciding: recommend never sees a test image
    rec, _ = measure_and_decide(splits[0], image_size=size, cache_dir=cache_dir)
    recommend_seconds = time.perf_counter() - start
    base = TrainConfig(patience=None, image_size=size, epochs=epochs, cache_dir=cache_dir)
    start = time.perf_counter()
    summary = compare(task.source, list(STRATEGIES), seeds, work / task.name, base, command="bench/recommend.py run",
                      **args)
    compare_wall = time.perf_counter() - start
    rows = summary["strategies"]
    return {
        "task": task.name, "dataset": task.dataset, "per_class": task.per_class, "protocol": task.protocol,
        "classes": summary["setup"]["classes"], "n_train": summary["setup"]["n_train"], "n_test": summary["n_test"],
        "metric": summary["metric"], "chance": summary["chance"], "image_size": size, "epochs": epochs,
        "seeds": seeds, "evidence": summary["setup"]["evidence"],
        "test": {s: rows[s]["test"]["estimate"] for s in STRATEGIES},
        "test_interval": {s: [rows[s]["test"]["low"], rows[s]["test"]["high"]] for s in STRATEGIES},
        "val_best": {s: rows[s]["val_accuracy_best_mean"] for s in STRATEGIES},
        "best": summary["best"], "tied": summary["tied"], "winner": summary["winner"],
        "recommended_by_verdict": summary["recommended"], "sentence": summary["sentence"],
        "recommend": {"strategy": rec.strategy, "train_last": rec.hyperparameters.get("train_last"),
                      "label": pick_label(rec.strategy, rec.hyperparameters.get("train_last")),
                      "reasons": rec.reasons, "measurements": plain_measurements(rec.measurements)},
        "seconds_by_strategy": seconds_by_strategy(summary),
        "seconds": {"recommend": recommend_seconds,
                    "compare_runs": sum(r["wall_seconds"] for s in STRATEGIES for r in rows[s]["runs"]),
                    "compare_wall_this_call": compare_wall},
        "environment": summary["setup"]["environment"],
    }


def seconds_by_strategy(summary: dict) -> dict[str, float]:
    """Mean training seconds of one run of each strategy (a compare summary's own wall_seconds)."""
    return {s: statistics.fmean(r["wall_seconds"] for r in row["runs"]) for s, row in summary["strategies"].items()}


def plain_measurements(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str, list, dict, type(None)))}


def run(tasks: list[Task], *, size: int, epochs: int, seeds: list[int], work: Path, cache_dir: Path | None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for i, task in enumerate(tasks, 1):
        target = RESULTS / f"{task.name}.json"
        if target.exists():
            print(f"[{i}/{len(tasks)}] {task.name}: done (delete {target} to redo it)", flush=True)
            continue
        print(f"[{i}/{len(tasks)}] {task.name}", flush=True)
        record = run_task(task, size=size, epochs=epochs, seeds=seeds, work=work, cache_dir=cache_dir)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(target)
        print(f"  best {record['best']} (tied {', '.join(record['tied'])}); recommend: {record['recommend']['label']}",
              flush=True)


# --- table ------------------------------------------------------------------------------------------------------


def regret(record: dict, label: str) -> float:
    """Points of test accuracy (or balanced accuracy) lost by picking `label`: 0 inside the tied set."""
    if label in record["tied"]:
        return 0.0
    return 100 * (record["test"][record["best"]] - record["test"][label])


def size_rule(m: dict) -> str:
    """A size-only policy in the style of BiT's HyperRule: the training size alone sets how much to train."""
    n = m["images_per_class"]
    return "linear" if n < 20 else ("partial" if n < 100 else "full")


# every strategy but the control as a fixed policy, so that "beats every fixed policy" hides none of them
FIXED_POLICIES = {**{f"always {s}": (lambda m, s=s: s) for s in STRATEGIES if s != "scratch"},
                  "size rule (BiT-style)": size_rule}


def candidate_thresholds(values: list[float]) -> list[float]:
    """Cuts between neighbouring measured values (midpoints), and 0: no cut on this axis (a one-axis rule)."""
    v = sorted(set(values))
    return [0.0] + [(a + b) / 2 for a, b in zip(v, v[1:])]


def fit_cell_rule(records: list[dict]) -> CellRule:
    """Exhaustive search over the measure and both thresholds: the least total regret over `records` wins; ties go
    to the first found (measures in MEASURES order, thresholds ascending), so the fit is deterministic. Each cell
    picks its least-regret strategy (the overall one for a cell with no task), and the rule keeps, per cell, the
    record its reasons quote."""
    measured = [r["recommend"]["measurements"] for r in records]
    overall = least_regret(records)
    best_rule, best_total = None, (math.inf, math.inf)
    for measure in MEASURES:
        values = [m[measure] for m in measured if m.get(measure) is not None]
        if not values:
            continue
        for size_cut, cut in product(candidate_thresholds([m["images_per_class"] for m in measured]),
                                     candidate_thresholds(values)):
            empty = CellRule(size_cut, measure, cut, {})
            groups = {c: [r for r in records if empty.cell(r["recommend"]["measurements"]) == c] for c in empty.cells()}
            rule = CellRule(size_cut, measure, cut, {c: least_regret(g) if g else overall for c, g in groups.items()},
                            {c: cell_record(g) for c, g in groups.items()})
            picks = [rule.pick(m) for m in measured]
            total = (round(sum(regret(r, p) for r, p in zip(records, picks)), 9), sum(map(COST_ORDER.index, picks)))
            if total < best_total:
                best_rule, best_total = rule, total
    return best_rule


def cell_record(records: list[dict]) -> dict:
    """What the benchmark measured in one cell: its tasks, how often each strategy was the best or tied with it,
    each strategy's mean regret (points), and the strategies ranked by it (equal regrets: cheaper first)."""
    if not records:
        return {"tasks": [], "best_or_tied": {}, "mean_regret": {}, "ranking": []}
    regrets = {s: statistics.fmean(regret(r, s) for r in records) for s in STRATEGIES}
    return {"tasks": [r["task"] for r in records],
            "best_or_tied": {s: sum(s in r["tied"] for r in records) for s in STRATEGIES},
            "mean_regret": {s: round(v, 2) for s, v in regrets.items()},
            "ranking": sorted(STRATEGIES, key=lambda s: (round(regrets[s], 9), COST_ORDER.index(s)))}


# Cheapest first, by mean training seconds per run on the benchmark's tasks (96 px, 6 epochs; e.g. blood-cells-pbc-10:
# partial:1 3 s, linear 5 s (its features computed cold), partial 6 s, gradual 10 s, lp-ft 13 s, full 24 s, scratch 24 s)
COST_ORDER = ("partial:1", "linear", "partial", "gradual", "lp-ft", "full", "scratch")


def least_regret(records: list[dict]) -> str:
    """The strategy with the least mean regret over `records`; equal regrets go to the cheaper (COST_ORDER)."""
    return min(STRATEGIES, key=lambda s: (round(statistics.fmean(regret(r, s) for r in records), 9),
                                          COST_ORDER.index(s)))


def recommend_label(m: dict, rule: CellRule) -> str:
    """What `recommend` picks with `rule` (its decide, hand-written scratch rule included), as a compare label."""
    strategy, train_last, _ = decide(m, rule)
    return pick_label(strategy, train_last)


def leave_one_dataset_out(records: list[dict]) -> dict[str, str]:
    """Each task's pick by recommend with the rule fitted on the other datasets' tasks only."""
    picks = {}
    for dataset in sorted({r["dataset"] for r in records}):
        rule = fit_cell_rule([r for r in records if r["dataset"] != dataset])
        for r in records:
            if r["dataset"] == dataset:
                picks[r["task"]] = recommend_label(r["recommend"]["measurements"], rule)
    return picks


RECOMMEND = "recommend (rule fitted leave-one-dataset-out)"


def policy_table(records: list[dict]) -> dict[str, dict]:
    """Per policy: its pick and regret on every task, the mean and the worst."""
    picks: dict[str, dict[str, str]] = {}
    if len({r["dataset"] for r in records}) > 1:  # fitting without the scored dataset needs another one
        picks[RECOMMEND] = leave_one_dataset_out(records)
    picks["recommend before the benchmark (hand-written rules, as run)"] = {
        r["task"]: r["recommend"]["label"] for r in records}
    for name, policy in FIXED_POLICIES.items():
        picks[name] = {r["task"]: policy(r["recommend"]["measurements"]) for r in records}
    picks["oracle"] = {r["task"]: r["best"] for r in records}
    table = {}
    timed = [r for r in records if r.get("seconds_by_strategy")]
    for name, chosen in picks.items():
        regrets = {r["task"]: regret(r, chosen[r["task"]]) for r in records}
        table[name] = {"picks": chosen, "regret": regrets, "mean_regret": statistics.fmean(regrets.values()),
                       "worst_regret": max(regrets.values()),
                       "relative_seconds": statistics.fmean(
                           r["seconds_by_strategy"][chosen[r["task"]]] / r["seconds_by_strategy"]["gradual"]
                           for r in timed) if timed else None}
    return table


def decision_table(records: list[dict]) -> dict:
    """The lesson's 2 × 2 (size small/large × similar/different to ImageNet), each cell holding which strategies
    were best or tied with the best, how often, and the tasks it holds."""
    cells: dict[str, dict] = {}
    for r in records:
        m = r["recommend"]["measurements"]
        key = lesson_cell(m["images_per_class"], m.get("high_level_similarity"))
        cell = cells.setdefault(key, {"tasks": [], "best": Counter(), "in_tied_set": Counter(), "margins": []})
        cell["tasks"].append(r["task"])
        cell["best"][r["best"]] += 1
        cell["in_tied_set"].update(r["tied"])
        if r["winner"]:
            second = max((s for s in STRATEGIES if s != r["best"]), key=lambda s: r["test"][s])
            cell["margins"].append(100 * (r["test"][r["best"]] - r["test"][second]))
    table = {}
    for key, c in sorted(cells.items()):
        regrets = cell_record([r for r in records if r["task"] in c["tasks"]])["mean_regret"]
        least = min(regrets.values())
        table[key] = {"tasks": c["tasks"], "best": dict(c["best"].most_common()),
                      "in_tied_set": dict(c["in_tied_set"].most_common()),
                      "winner_margins_points": [round(x, 1) for x in c["margins"]], "mean_regret": regrets,
                      "least_regret": sorted((s for s, v in regrets.items() if v == least),
                                             key=COST_ORDER.index)}  # every strategy at the least, cheapest first
    return table


def describe(rule: CellRule) -> str:
    size = (f"small data = under {rule.size_threshold:.0f} training images per class" if rule.size_threshold else
            "no cut by size (every task on one side)")
    measure = (f"`{rule.measure}` cut at {rule.threshold:.3f}" if rule.threshold else
               f"no cut by `{rule.measure}`")
    return f"{size}; {measure}"


# what the lesson's 2 × 2 advises in each cell, to be checked against the measured regrets
TEXTBOOK = {"small data, similar to ImageNet": "linear", "small data, different to ImageNet": "linear",
            "large data, similar to ImageNet": "full", "large data, different to ImageNet": "full"}


def markdown(records: list[dict], table: dict[str, dict], cells: dict, rule: CellRule) -> str:
    first = records[0]
    fixed = min((n for n in table if n in FIXED_POLICIES), key=lambda n: table[n]["mean_regret"])
    lines = [
        "# The recommend benchmark",
        "",
        "Generated by `bench/recommend.py table` from `bench/results/recommend/*.json` (do not edit by hand).",
        f"{len(records)} tasks from {len({r['dataset'] for r in records})} datasets; every strategy "
        f"({', '.join(STRATEGIES)}) × seeds {first['seeds']}, {first['epochs']} epochs, {first['image_size']} px, "
        f"CPU threads per process {threads(records)}; "
        "figures are test figures (accuracy, or balanced accuracy where the classes are imbalanced) of the best "
        "epoch chosen on val. Regret = the best strategy's mean test figure − the pick's, in points; 0 when the pick "
        "is in the verdict's tied set (a difference the test images cannot tell from zero is not a regret).",
        "",
        "## Policies",
        "",
        f"`{RECOMMEND}` is `recommend` as it ships, scored honestly: for the tasks of each dataset its cell rule is "
        "fitted on the other datasets' tasks only. The best fixed policy is "
        f"**{fixed}** (mean regret {table[fixed]['mean_regret']:.2f})"
        + (f"; recommend's is **{table[RECOMMEND]['mean_regret']:.2f}**." if RECOMMEND in table else "."),
        "",
        f"Training time: the pick's mean seconds per run relative to `gradual`'s on the same task, over the "
        f"{sum(bool(r.get('seconds_by_strategy')) for r in records)} tasks whose per-strategy seconds were recorded.",
        "",
        "| policy | mean regret | worst regret | tasks with regret 0 | training time vs always gradual |",
        "|---|---|---|---|---|",
    ]
    for name, row in sorted(table.items(), key=lambda kv: (kv[1]["mean_regret"], kv[1]["relative_seconds"] or 0)):
        zero = sum(v == 0 for v in row["regret"].values())
        cost = "—" if row["relative_seconds"] is None else f"{row['relative_seconds']:.2f}×"
        lines.append(f"| {name} | {row['mean_regret']:.2f} | {row['worst_regret']:.1f} | {zero}/{len(records)} | "
                     f"{cost} |")
    lines += ["", *verdict(records, table, fixed), "", "## The rule that ships", "",
              f"Fitted on all {len(records)} tasks (`src/headstart/analysis/track_record.json`; the in-sample regret of "
              f"a fitted rule is not evidence, the leave-one-dataset-out row above is): {describe(rule)}.", "",
              "| cell | pick | tasks | best or tied with the best (of the cell's tasks) | mean regret per strategy |",
              "|---|---|---|---|---|"]
    for cell in rule.cells():
        rec = rule.record.get(cell, {})
        tasks = rec.get("tasks", [])
        tied = ", ".join(f"{s} {n}" for s, n in sorted(rec.get("best_or_tied", {}).items(), key=lambda kv: -kv[1]) if n)
        regrets = ", ".join(f"{s} {rec['mean_regret'][s]:.1f}" for s in rec.get("ranking", []))
        lines.append(f"| {cell} | {rule.picks[cell]} | {', '.join(tasks) or '—'} | {tied or '—'} | {regrets or '—'} |")
    policies = [RECOMMEND] if RECOMMEND in table else []
    lines += ["", "## Per task", "",
              "| task | n/class | probe acc. | high-level sim. | best (tied set) | recommend (LODO) | regret | "
              "linear | partial:1 | partial | full | gradual | lp-ft | recommend s | compare s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r["recommend"]["measurements"]
        pick = table[RECOMMEND]["picks"][r["task"]] if policies else "—"
        pick_regret = f"{table[RECOMMEND]['regret'][r['task']]:.1f}" if policies else "—"
        cols = [f"{table[f'always {s}']['regret'][r['task']]:.1f}" for s in STRATEGIES if s != "scratch"]
        high = m.get("high_level_similarity")
        lines.append(f"| {r['task']} | {m['images_per_class']:.0f} | {m['probe_accuracy']:.2f} | "
                     f"{'—' if high is None else f'{high:.2f}'} | {r['best']} ({', '.join(r['tied'])}) | {pick} | "
                     f"{pick_regret} | {' | '.join(cols)} | {r['seconds']['recommend']:.0f} | "
                     f"{r['seconds']['compare_runs']:.0f} |")
    ratio = [r["seconds"]["recommend"] / r["seconds"]["compare_runs"] for r in records]
    lines += ["", f"recommend's cost: median {100 * statistics.median(ratio):.1f}% of compare's training seconds on the "
              f"same task (worst {100 * max(ratio):.1f}%). The whole benchmark: "
              f"{sum(r['seconds']['compare_runs'] for r in records) / 3600:.1f} h of compare's training seconds and "
              f"{sum(r['seconds']['recommend'] for r in records) / 60:.1f} min of recommend (cold), summed over the "
              "tasks (training seconds only, not decoding or test figures; the one-thread tasks ran two side by side).", "",
              "## The decision table, measured", "",
              f"The lesson's 2 × 2: small = under {SMALL_PER_CLASS} training images per class; similar or different "
              f"by the probe's high-level similarity to ImageNet's BatchNorm statistics (different: under {DIFFERENT}). "
              "Each cell: how often each strategy was the best, how often it was in the tied set, and the textbook's "
              "advice checked against the measured regrets.", "",
              "| cell | tasks | best | in the tied set | least regret | the textbook says | its regret here |",
              "|---|---|---|---|---|---|---|"]
    for key, c in cells.items():
        best = ", ".join(f"{s} {n}" for s, n in c["best"].items())
        tied = ", ".join(f"{s} {n}" for s, n in c["in_tied_set"].items())
        least = c["least_regret"]
        advice = TEXTBOOK[key]
        lines.append(f"| {key} | {len(c['tasks'])} | {best} | {tied} | {', '.join(least)} "
                     f"({c['mean_regret'][least[0]]:.1f}) | "
                     f"{advice} | {c['mean_regret'][advice]:.1f} |")
    return "\n".join(lines) + "\n"


def verdict(records: list[dict], table: dict[str, dict], fixed: str) -> list[str]:
    """What the policy table says about recommend, in words, from its figures: which policies it beats, which it
    does not, what it saves, and where it lost most."""
    if RECOMMEND not in table:
        return []
    ours = table[RECOMMEND]
    beaten = [n for n in table if n in FIXED_POLICIES and table[n]["mean_regret"] > ours["mean_regret"]]
    unbeaten = [n for n in table if n in FIXED_POLICIES and n not in beaten]
    worst = max(ours["regret"], key=ours["regret"].get)
    said = [f"recommend's leave-one-dataset-out mean regret ({ours['mean_regret']:.2f}) is lower than that of "
            f"{len(beaten)} of the {len(FIXED_POLICIES)} fixed policies"
            + (f" ({', '.join(beaten)})" if beaten else "") + "."]
    for name in unbeaten:
        row = table[name]
        tied = sum(v == 0 for v in row["regret"].values())
        time = (f" It trains in {ours['relative_seconds'] / row['relative_seconds']:.2f}× the time of {name}"
                if ours["relative_seconds"] and row["relative_seconds"] else "")
        said.append(f"It does not beat **{name}** ({row['mean_regret']:.2f}; best or tied with the best on {tied} of "
                    f"{len(records)} tasks), so on accuracy alone, at these settings, {name} is the advice.{time}: "
                    "what recommend offers over it is training time, not accuracy.")
    if ours["regret"][worst] > 0:
        said.append(f"Its largest loss: {worst}, {ours['regret'][worst]:.1f} points (picked "
                    f"{ours['picks'][worst]} with the rule fitted without {worst.rsplit('-', 1)[0]}).")
    return [" ".join(said)]


def threads(records: list[dict]) -> str:
    counts = Counter(r["environment"].get("cpus", "?") for r in records)
    return ", ".join(f"{n} ({k} task{'s' if k != 1 else ''})" for n, k in sorted(counts.items(), key=str))


def table() -> None:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))
               if p.name not in ("table.json", "decision_table.json")]
    if not records:
        sys.exit("no task results yet: run `bench/recommend.py run` first")
    scores = policy_table(records)
    cells = decision_table(records)
    rule = fit_cell_rule(records)
    (RESULTS / "table.json").write_text(json.dumps(scores, indent=1))
    (RESULTS / "decision_table.json").write_text(json.dumps(cells, indent=1))
    summary = {name: {"mean_regret": round(row["mean_regret"], 2), "worst_regret": round(row["worst_regret"], 2),
                      "relative_seconds": row["relative_seconds"] and round(row["relative_seconds"], 2)}
               for name, row in scores.items()}
    TRACK_RECORD.write_text(json.dumps({
        "generated_by": "bench/recommend.py table", "tasks": len(records),
        "datasets": sorted({r["dataset"] for r in records}),
        "settings": {k: records[0][k] for k in ("seeds", "epochs", "image_size")},
        "rule": rule.to_dict(), "policies": summary, "recommend_policy": RECOMMEND,
        "small_per_class": SMALL_PER_CLASS, "different_below": DIFFERENT, "decision_table": cells,
        "textbook": TEXTBOOK}, indent=1) + "\n")
    DOCS.write_text(markdown(records, scores, cells, rule))
    for name, row in sorted(scores.items(), key=lambda kv: kv[1]["mean_regret"]):
        print(f"{name:58s} mean regret {row['mean_regret']:5.2f}  worst {row['worst_regret']:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--tasks", help="comma-separated task names, run in that order (default: all); `--tasks list` lists them")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2",
                        help="3 at least: with 2 the verdict's seed level has 1 degree of freedom and most read as tied")
    parser.add_argument("--work", type=Path, default=HERE.parent / "runs" / "bench-recommend")
    parser.add_argument("--cache-dir", type=Path)
    a = parser.parse_args()
    if a.command == "table":
        table()
        return
    if a.tasks == "list":
        print("\n".join(t.name for t in TASKS))
        return
    wanted = a.tasks.split(",") if a.tasks else [t.name for t in TASKS]
    unknown = sorted(set(wanted) - {t.name for t in TASKS})
    if unknown:
        sys.exit(f"unknown tasks {', '.join(unknown)} (see --tasks list)")
    by_name = {t.name: t for t in TASKS}
    run([by_name[name] for name in wanted], size=a.size, epochs=a.epochs,
        seeds=[int(s) for s in a.seeds.split(",")], work=a.work, cache_dir=a.cache_dir)


if __name__ == "__main__":
    main()
