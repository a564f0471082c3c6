"""The lesson notebooks: every one executes end to end (TINY settings, real data), the committed copies are
executed, paired with their .py source and free of machine paths, and the exercises are the solutions with gaps."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from conftest import needs_shared

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def load_execute():
    spec = importlib.util.spec_from_file_location("lesson_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_sources(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_exercises_are_the_solutions_with_every_solution_replaced_by_a_gap():
    execute = load_execute()
    solutions = (NOTEBOOKS / "07_solutions.py").read_text()
    exercises = (NOTEBOOKS / "07_exercises.py").read_text()
    assert exercises == execute.exercises_source(solutions), "run `python notebooks/execute.py` to regenerate"
    assert "BEGIN SOLUTION" not in exercises
    assert exercises.count("raise NotImplementedError") == solutions.count("# BEGIN SOLUTION") >= 4


def test_every_committed_notebook_is_its_py_source_executed_without_machine_paths():
    import jupytext

    execute = load_execute()
    sources = execute.notebooks()
    assert len(sources) >= 7
    repo = str(NOTEBOOKS.parent)
    for source in sources:
        committed = json.loads(source.with_suffix(".ipynb").read_text())
        assert code_sources(committed) == code_sources(jupytext.read(source)), f"{source.name}: re-run make lesson"
        code = [c for c in committed["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] for c in code), f"{source.name}: committed without executing every cell"
        assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"]), source.name
        text = json.dumps([c["outputs"] for c in code])
        assert repo not in text and "/work/" not in text and "/home/" not in text, f"{source.name}: machine path"
        # executing again changes the committed file only where an output changed: no random ids, no timestamps
        assert [c["id"] for c in committed["cells"]] == [f"cell-{i:03d}" for i in range(len(committed["cells"]))]
        assert not any("execution" in c["metadata"] for c in committed["cells"]), f"{source.name}: timestamps"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_notebook_executes_end_to_end_with_tiny_settings(tmp_path, monkeypatch):
    needs_shared("cifar10-cat-dog-horse")
    needs_shared("blood-cells-pbc")
    monkeypatch.setenv("LESSON_SETTING", "TINY")
    monkeypatch.setenv("LESSON_RUNS", str(tmp_path / "runs"))
    src = str(NOTEBOOKS.parent / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    execute = load_execute()
    # one kernel, reset between notebooks (raises CellExecutionError on the first failing cell)
    execute.execute_in_one_kernel(execute.notebooks(), tmp_path, timeout=600)
    for source in execute.notebooks():
        executed = json.loads((tmp_path / source.with_suffix(".ipynb").name).read_text())
        outputs = json.dumps([c.get("outputs", []) for c in executed["cells"]])
        assert "model: " in outputs, f"{source.name} did not say which backbone it used"
