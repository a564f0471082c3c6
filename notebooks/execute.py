"""Run the lesson notebooks end to end with a Jupyter kernel and save the executed copies: `make lesson`.

    python notebooks/execute.py [--setting FAST|TINY|FULL] [--out DIR] [--only 03] [--keep-runs]

The notebooks are authored as jupytext percent files (`NN_name.py`); each is executed in notebooks/ (its
paths are relative to it) with LESSON_SETTING set, and written as `NN_name.ipynb` beside it (or into --out)
with the outputs scrubbed of machine paths. `07_exercises` is generated from `07_solutions` (its solution
blocks become gaps) and is not executed. By default the setting's runs folder is emptied first, so every
number in the outputs comes from this execution.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXERCISES, SOLUTIONS = HERE / "07_exercises.py", HERE / "07_solutions.py"
SOLUTION_BLOCK = re.compile(r"^( *)# BEGIN SOLUTION\n.*?^ *# END SOLUTION\n", re.S | re.M)


def notebooks() -> list[Path]:
    """Every notebook that executes, in lesson order (the exercises are generated, not executed)."""
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py") if p != EXERCISES)


def exercises_source(solutions: str) -> str:
    """The exercises notebook: the solutions notebook with every solution block replaced by a gap to fill."""
    text = SOLUTION_BLOCK.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError\n",
                              solutions)
    return text.replace("# # 7 · Exercises: solutions", "# # 7 · Exercises")


def write_exercises() -> None:
    import jupytext

    EXERCISES.write_text(exercises_source(SOLUTIONS.read_text()))
    nb = jupytext.read(EXERCISES)
    number_cells(nb)
    jupytext.write(nb, EXERCISES.with_suffix(".ipynb"))


def number_cells(nb) -> None:
    """Cell ids by position instead of nbformat's random ones, and no execution timestamps: executing a notebook
    again changes its committed file only where an output changed."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        cell.metadata.pop("execution", None)


def machine_paths() -> list[tuple[str, str]]:
    """Absolute paths that must not be committed, longest first, with what replaces them."""
    sys.path.insert(0, str(HERE))
    import lessonkit

    pairs = {str(HERE.parent): "<repo>", str(lessonkit.DATA.resolve()): "<data>", str(lessonkit.DATA): "<data>",
             sys.prefix: "<python>", tempfile.gettempdir(): "<tmp>", str(Path.home()): "~"}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub(nb) -> None:
    """Replace machine paths in every output (text, streams, tracebacks) with placeholders."""
    paths = machine_paths()

    def clean(text: str) -> str:
        for path, placeholder in paths:
            text = text.replace(path, placeholder)
        return text

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = clean(output["text"])
            for key in ("text/plain", "text/html", "text/markdown"):
                if key in output.get("data", {}):
                    value = output["data"][key]
                    output["data"][key] = clean("".join(value) if isinstance(value, list) else value)
            if "traceback" in output:
                output["traceback"] = [clean(line) for line in output["traceback"]]


def execute(source: Path, target: Path, timeout: int = 3600) -> float:
    """Execute one jupytext notebook in notebooks/ and write the scrubbed .ipynb; returns the seconds it took."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(source)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - t0
    save(nb, target)
    return seconds


def save(nb, target: Path) -> None:
    """An executed notebook as committed: outputs scrubbed of machine paths, no widget state."""
    import jupytext

    scrub(nb)
    number_cells(nb)
    nb.metadata.pop("widgets", None)
    jupytext.write(nb, target, fmt="ipynb")


def execute_in_one_kernel(sources: list[Path], out: Path, timeout: int = 600) -> None:
    """Execute several notebooks one after another in one kernel, its namespace reset (`%reset -f`) before each,
    and write the scrubbed copies into `out`: what CI runs. Modules stay imported from one notebook to the next,
    which saves each notebook the seconds of importing torch, timm and headstart; no variable survives the reset,
    so a notebook that leans on another's names still fails. `make lesson` gives every notebook its own kernel."""
    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(HERE))
    try:
        for source in sources:
            nb = jupytext.read(source)
            nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
            NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3").execute()
            nb.cells.pop(0)
            save(nb, out / source.with_suffix(".ipynb").name)
    finally:
        km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default=os.environ.get("LESSON_SETTING", "FAST"), choices=["TINY", "FAST", "FULL"])
    parser.add_argument("--out", type=Path, default=HERE, help="where the executed .ipynb go (default: beside the .py)")
    parser.add_argument("--only", help="run only the notebooks whose name starts with this")
    parser.add_argument("--keep-runs", action="store_true", help="reuse finished runs instead of training again")
    args = parser.parse_args()
    os.environ["LESSON_SETTING"] = args.setting  # the kernels inherit it; lessonkit reads it
    sys.path.insert(0, str(HERE))
    import lessonkit

    if not args.keep_runs and args.only is None:
        shutil.rmtree(lessonkit.runs_folder(args.setting), ignore_errors=True)
    write_exercises()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for source in notebooks():
        if args.only and not source.name.startswith(args.only):
            continue
        seconds = execute(source, args.out / source.with_suffix(".ipynb").name)
        total += seconds
        print(f"{source.name}: {seconds:.0f} s", flush=True)
    print(f"executed with LESSON_SETTING={args.setting} in {total:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
