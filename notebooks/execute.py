"""Run the lesson notebook end to end with a Jupyter kernel and save the executed copy: `make lesson`.

    python notebooks/execute.py [--full] [--out runs/lesson/lesson.ipynb]

The notebook runs in notebooks/ (its paths are relative to it). `--full` sets FAST = False (224 px, 3 seeds,
five strategies: most of an hour on 2 cores); the default FAST run takes minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="FAST = False: the real sizes")
    parser.add_argument("--out", type=Path, default=HERE.parent / "runs" / "lesson" / "lesson.ipynb")
    args = parser.parse_args()
    nb = nbformat.read(HERE / "lesson.ipynb", as_version=4)
    if args.full:
        for cell in nb.cells:
            if cell.cell_type == "code" and "FAST = True" in cell.source:
                cell.source = cell.source.replace("FAST = True", "FAST = False")
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, args.out)
    print(f"executed {HERE / 'lesson.ipynb'} in {time.perf_counter() - t0:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
