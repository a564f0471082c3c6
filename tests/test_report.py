"""Reports: the SVG diagram, the findings sentences, the single-run report, and the compare report opened in
a real headless Chromium (no console errors, every image loaded, one table row per strategy, a screenshot)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdp_browser import Browser, find_chromium
from headstart.api import train
from headstart.backbones import load_backbone
from headstart.cli import app
from headstart.compare import compare
from headstart.report.diagram import FROZEN, SCRATCH, TRAINABLE, DiagramRow, strategy_diagram
from headstart.report.markdown import findings
from headstart.strategies import describe_strategy, get_strategy
from headstart.train import TrainConfig
from tiny_images import make_dataset

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SVG = "{http://www.w3.org/2000/svg}"


def diagram_row(name: str) -> DiagramRow:
    model = load_backbone("test_efficientnet", pretrained=False)
    model.reset_head(3)
    strategy = get_strategy(name)
    return DiagramRow(name, strategy.pretrained, describe_strategy(strategy, model))


def block_fills(svg: str) -> list[list[str]]:
    """Fill of every stage-group block, row by row (blocks are the rects inside a titled <g>)."""
    root = ET.fromstring(svg)
    return [g.find(f"{SVG}rect").get("fill") for g in root.iter(f"{SVG}g")]


def test_diagram_colours_follow_the_strategy():
    rows = [diagram_row(n) for n in ("scratch", "linear", "partial", "gradual")]
    fills = block_fills(strategy_diagram(rows))
    n = len(rows[0].groups)  # stem, stages..., head
    scratch, linear, partial, gradual = (fills[i * n:(i + 1) * n] for i in range(4))
    assert scratch == [SCRATCH] * n  # random start: everything trains
    assert linear == [FROZEN] * (n - 1) + [TRAINABLE]  # only the head
    assert partial == [FROZEN] * (n - 3) + [TRAINABLE] * 3  # last 2 stage groups + head
    assert gradual == ["url(#later)"] * (n - 1) + [TRAINABLE]  # head now, the rest unfrozen later
    svg = strategy_diagram(rows[2:3])
    total = sum(g["params"] for g in rows[2].groups)
    trainable = sum(g["params"] for g in rows[2].groups if g["trainable"])
    assert f"({trainable / total:.0%})" in svg  # the share written next to the row is the real one


def test_inspect_draws_the_diagram(tmp_path):
    path = tmp_path / "partial.svg"
    result = CliRunner().invoke(app, ["inspect", "test_efficientnet", "--strategy", "partial", "--diagram", str(path)])
    assert result.exit_code == 0, result.output
    fills = block_fills(path.read_text())
    assert fills.count(TRAINABLE) == 3 and fills[0] == FROZEN  # partial: the last 2 stage groups + head


def summary_of(test: dict[str, float], gap: dict[str, float], n: int = 1000) -> dict:
    """A summary as compare writes it, from synthetic test predictions with the given accuracies (errors drawn
    independently per strategy, three identical seeds) and the real verdict."""
    from dataclasses import asdict

    import numpy as np

    from headstart.stats import Cost, RunPredictions, verdict

    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    runs = []
    for name, accuracy in test.items():
        pred = y.copy()
        wrong = rng.choice(n, round((1 - accuracy) * n), replace=False)
        pred[wrong] = 1 - pred[wrong]
        runs += [RunPredictions(name, seed, y, pred, list(range(n))) for seed in range(3)]
    seconds = {name: {"scratch": 600.0, "linear": 10.0}.get(name, 50.0) for name in test}
    costs = {name: Cost(seconds[name], 2_600 if name == "linear" else 3_400_000) for name in test}
    judged = verdict(runs, costs, num_classes=2)
    table = {name: {"test": asdict(judged.intervals[name]), "final_train_accuracy_mean": test[name] + gap[name],
                    "gap_mean": gap[name], "n_seeds": 3, "pretrained": name != "scratch", "description": name,
                    "wall_seconds_mean": seconds[name]} for name in test}
    return {"metric": judged.metric, "chance": judged.chance, "winner": judged.winner, "recommended": judged.recommended,
            "best": judged.best, "tied": judged.tied, "sentence": judged.sentence, "verdict": asdict(judged),
            "strategies": table, "ranking": sorted(test, key=test.get, reverse=True), "setup": {"n_train": 1500}}


def test_findings_say_the_verdict_and_why_in_test_figures():
    s = summary_of({"scratch": 0.55, "linear": 0.83, "partial": 0.87}, {"scratch": 0.35, "linear": 0.02, "partial": 0.09})
    text = findings(s)
    assert s["winner"] == "partial" and text[0] == s["sentence"][0].upper() + s["sentence"][1:] + "."
    assert text[0].startswith("Partial wins: it beats every other strategy at 95% on accuracy")
    assert "by 32.0 points (95% interval" in text[1] and "35.0 points gap" in text[1] and "memorises" in text[1]
    assert "adds 4.0 points (95% interval" in text[2] and "over frozen features" in text[2]
    close = summary_of({"linear": 0.917, "partial": 0.919}, {"linear": 0.04, "partial": 0.03})
    assert close["winner"] is None and close["recommended"] == "linear"  # tied, and linear is the cheaper
    assert "are tied on this data" in findings(close)[0] and "linear is 5.0× cheaper" in findings(close)[0]
    assert "not clearly better than frozen features" in findings(close)[1] and "0.2 points behind" in findings(close)[1]
    easy = findings(summary_of({"scratch": 0.978, "linear": 0.992}, {"scratch": -0.01, "linear": 0.0}))
    assert "easy even from random weights" in easy[1] and "1.4 points behind" in easy[1] and "600 s" in easy[1]
    assert not any("makes the difference" in line for line in easy)  # no strong claim from a small difference
    chance = summary_of({"linear": 0.51, "partial": 0.52}, {"linear": 0.3, "partial": 0.4}, n=100)
    assert findings(chance)[0].startswith("No strategy beats chance") and "reaches down to chance" in findings(chance)[1]
    assert len(findings(chance)) == 2  # no reasons are read into noise


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_train_writes_a_single_run_report(data, tmp_path):
    cfg = TrainConfig(model="test_efficientnet", strategy="partial", epochs=2, image_size=32, batch_size=8,
                      num_workers=0, cache_dir=str(tmp_path / "cache"))
    run = train(data, cfg, tmp_path / "run", command="headstart train tiny")
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<svg" in html and "headstart train tiny" in html
    grid = json.loads((tmp_path / "run" / "val_grid.json").read_text())
    assert grid["n"] == run["n_val"] == 8
    wrong = [g["correct"] for g in grid["images"]].index(True) if any(g["correct"] for g in grid["images"]) else None
    assert all(not g["correct"] for g in grid["images"][:wrong])  # misclassified first
    assert grid["n_wrong"] == sum(not g["correct"] for g in grid["images"])  # 8 images: all of them shown


@pytest.fixture(scope="module")
def compare_out(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = TrainConfig(model="test_efficientnet", epochs=2, image_size=32, batch_size=8, num_workers=0,
                      patience=None, cache_dir=str(out / "cache"))
    compare(data, ["scratch", "linear", "partial"], [0, 1], out, cfg, val_as_test=True, command="headstart compare tiny")
    return out


@pytest.mark.browser
def test_report_opens_in_headless_chromium(compare_out):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    for page, rows in ((compare_out / "report.html", 3), (compare_out / "runs" / "linear-seed0" / "report.html", 0)):
        with Browser(binary) as browser:
            browser.open(page.resolve().as_uri())
            widths = browser.evaluate("[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths), widths  # every image decoded
            assert browser.evaluate("document.querySelectorAll('#results tbody tr').length") == rows
            assert browser.evaluate("document.querySelectorAll('svg').length") >= 1
            if rows:
                sentence = json.loads((compare_out / "summary.json").read_text())["sentence"]
                assert sentence[1:] in browser.evaluate("document.querySelector('.winner').innerText")
                assert "nothing was selected on" in browser.evaluate("document.querySelector('#evidence').innerText")
            shot = browser.screenshot(ARTIFACTS / f"{'compare' if rows else 'run'}-report.png")
            assert browser.console_errors() == []
        assert shot.stat().st_size > 10_000


def test_drawing_a_plot_leaves_the_importing_programs_matplotlib_backend_alone(tmp_path):
    """A notebook's inline plots must keep working after headstart draws its files: the library never switches
    matplotlib's global backend (it draws on bare Figures)."""
    import os
    import subprocess
    import sys

    code = (
        "import matplotlib; from pathlib import Path\n"
        "from headstart.report.plots import plot_curves\n"
        "history = [{'epoch': e, 'train_loss': 1 / e, 'val_loss': 1.2 / e, 'train_accuracy': 0.5 + e / 10,"
        " 'val_accuracy': 0.4 + e / 10} for e in (1, 2, 3)]\n"
        f"plot_curves(history, Path({str(tmp_path / 'curves.png')!r}))\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "curves.png").stat().st_size > 1000
