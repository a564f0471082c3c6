"""Where the cells of an experiment run: one after another in this process, or as tasks of a Ray cluster.

A comparison is strategies × seeds (× folds) cells, each one `pipeline.train` into its own run directory. The
cells do not talk to each other: the only thing they share is the data they read and the folder they write
into. So spreading them is a scheduling question, and headstart leaves it to the engine people already run:

    SerialExecutor   every cell in this process, one after another (the default; what `compare` always did)
    RayExecutor      every cell a Ray task (`headstart[cluster]`): on a local Ray instance that uses this
                     machine's cores and GPUs, or on an existing cluster (`address="auto"`, `"ray://head:10001"`)

Both take the same list of `Cell`s and the same `work` (a picklable callable: cell -> run.json) and return one
`CellOutcome` per cell. A cell computes the same thing wherever it runs: `work` carries the data split itself,
and the cell its whole TrainConfig (seed included), so a worker rebuilds nothing from its own surroundings.

Faults, as Ray words them:
- A worker that dies mid-cell (killed, out of memory, a lost node) is a *system* failure: Ray runs the task again
  (`retries` times). The cell's config has `resume=True`, so the new attempt continues from the run's last whole
  epoch (its resume.pt) instead of starting over; the run folder's lock died with the old worker.
- A cell that raises (bad data, a bug) is an *application* error: not retried (`retry_exceptions=False`, the same
  error would come back), recorded in its outcome, and the other cells go on.
- Ctrl-C on the driver cancels the cells still queued or running (`ray.cancel`: a KeyboardInterrupt in the task,
  which the training loop turns into a saved resume point), waits a little for them to save, then re-raises. Runs
  that finished are whole on disk and are reused by the next `compare`.

Ray is imported here only, and only when a RayExecutor runs.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape

from headstart.console import info, warn
from headstart.errors import HeadstartError
from headstart.files import folder_lock
from headstart.progress import cells_view
from headstart.train import TrainConfig

INSTALL_RAY = "--executor ray needs Ray: pip install 'headstart[cluster]' (or pip install 'ray>=2.9')"
WORKER_DEATH_RETRIES = 3  # attempts after the first when the worker process dies (not when the cell raises)
CANCEL_GRACE_S = 30.0  # after Ctrl-C, how long cancelled cells get to save their resume point
LOCK_WAIT_S = 120.0  # how long a retried cell waits for the folder its dead worker's children still hold


@dataclass(frozen=True)
class Cell:
    """One run of an experiment: a strategy label with a seed (and a fold), trained with `cfg` into `directory`."""

    strategy: str
    seed: int
    fold: int | None
    cfg: TrainConfig
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.strategy}, seed {self.seed}{f', fold {self.fold}' if self.fold else ''}"


@dataclass
class CellOutcome:
    """What became of a cell: its run.json (None in the extra processes of --devices N), or the error it raised
    in one line (`error`) with the traceback (`details`)."""

    cell: Cell
    run: dict | None = None
    error: str | None = None
    details: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None


Work = Callable[[Cell], "dict | None"]


def one_line(error: BaseException) -> str:
    """A user error's own message; anything else with its type, so a bug reads as one."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, HeadstartError) else f"{type(error).__name__}: {text}".rstrip(": ")


# --------------------------------------------------------------------------------------------- serial
@dataclass(frozen=True)
class SerialExecutor:
    """Every cell in this process, in order. `keep_going=False` lets a cell's error end the experiment: with
    --devices N every process runs every cell, and one that skipped a failed cell while the others were still in
    it would meet them in the wrong collective."""

    keep_going: bool = True
    parallel = False  # cells never overlap: nothing to warm up before them

    def check(self) -> None:
        """Nothing to check: the serial executor needs nothing beyond headstart."""

    def run(self, cells: list[Cell], work: Work) -> list[CellOutcome]:
        outcomes = []
        for i, cell in enumerate(cells, 1):
            info(f"[bold]run {i}/{len(cells)}: {cell.name}[/]")
            start = time.monotonic()
            try:
                run = work(cell)
            except Exception as e:
                if not self.keep_going:
                    raise
                outcomes.append(CellOutcome(cell, error=one_line(e), details=traceback.format_exc(),
                                            seconds=time.monotonic() - start))
                warn(f"{cell.name} failed: {escape(outcomes[-1].error)} (the other runs go on)")
                continue
            if run is not None and run.get("interrupted"):
                info(f"interrupted: {len(cells) - i + 1} runs left; run the same command again to finish them")
                raise KeyboardInterrupt
            outcomes.append(CellOutcome(cell, run=run, seconds=time.monotonic() - start))
        return outcomes


# --------------------------------------------------------------------------------------------- Ray
@dataclass(frozen=True)
class CellResources:
    """What one cell asks Ray for, and how many cells that lets run at once."""

    cpus: float
    gpus: float
    memory_bytes: int | None
    at_once: int

    def describe(self) -> str:
        gpu = f", {self.gpus:g} GPU" if self.gpus else ""
        memory = f", {self.memory_bytes / 1024**3:g} GB" if self.memory_bytes else ""
        return f"{self.at_once} cells at once ({self.cpus:g} CPU{gpu}{memory} each)"


def plan_resources(cluster: dict[str, float], cpus: float | None = None, gpus: float | None = None,
                   memory_gb: float | None = None, max_parallel: int | None = None,
                   use_gpus: bool = True) -> CellResources:
    """A cell's request on `cluster` (Ray's resource totals). By default a cell takes one GPU when the cluster
    has any and the runs may use one (`use_gpus`: not with --device cpu), a fraction when asked (several small
    runs share a card), and its share of the CPUs that come with
    that GPU (they decode and augment); on CPUs alone, one core (torch then uses one thread: two cells on two
    cores beat one cell on two, since small models do not scale across threads). At once: what the scarcest
    resource allows, capped by `max_parallel`."""
    total_cpus, total_gpus = cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
    gpus = (1.0 if total_gpus and use_gpus else 0.0) if gpus is None else gpus
    if gpus > total_gpus:
        raise HeadstartError(f"--gpus-per-cell {gpus:g}: the Ray cluster has {total_gpus:g} GPUs")
    if cpus is None:
        cpus = max(1.0, math.floor(total_cpus * gpus / total_gpus)) if gpus else 1.0
    if cpus > total_cpus:
        raise HeadstartError(f"--cpus-per-cell {cpus:g}: the Ray cluster has {total_cpus:g} CPUs")
    limits = [math.floor(total_cpus / cpus) if cpus else math.inf, math.floor(total_gpus / gpus) if gpus else math.inf]
    memory = int(memory_gb * 1024**3) if memory_gb else None
    if memory:
        limits.append(math.floor(cluster.get("memory", 0) / memory))
    at_once = int(min(limits + [max_parallel or math.inf]))
    if at_once < 1:
        raise HeadstartError(f"one cell asks for more than the Ray cluster has ({cluster}): lower --memory-per-cell")
    return CellResources(cpus, gpus, memory, at_once)


def import_ray():
    try:
        import ray
    except ImportError:
        raise HeadstartError(INSTALL_RAY) from None
    return ray


@dataclass(frozen=True)
class RayExecutor:
    """Every cell a Ray task. `address`: an existing cluster ('auto', 'ray://host:10001'); None starts a local
    Ray instance with this machine's cores and GPUs (`num_cpus`/`num_gpus` to use fewer), or joins the one this
    process already started. `max_parallel` caps the cells in flight; `cpus_per_cell`, `gpus_per_cell` (a
    fraction lets cells share a GPU) and `memory_per_cell_gb` are each task's request (see `plan_resources`).
    `retries`: how often a cell whose worker died is started again (it resumes from its last epoch)."""

    address: str | None = None
    max_parallel: int | None = None
    cpus_per_cell: float | None = None
    gpus_per_cell: float | None = None
    memory_per_cell_gb: float | None = None
    retries: int = WORKER_DEATH_RETRIES
    num_cpus: int | None = None
    num_gpus: int | None = None
    parallel = True  # cells overlap: shared work (the decoded images) is best done once before them

    def __post_init__(self):
        if self.max_parallel is not None and self.max_parallel < 1:
            raise HeadstartError("--max-parallel must be at least 1")
        for name in ("cpus_per_cell", "gpus_per_cell", "memory_per_cell_gb"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise HeadstartError(f"--{name.replace('_', '-').replace('-gb', '')} must not be negative")

    def check(self) -> None:
        """Ray is installed (else one line on how to install it)."""
        import_ray()

    def run(self, cells: list[Cell], work: Work) -> list[CellOutcome]:
        ray = import_ray()
        with connected(ray, self) as cluster:
            plan = plan_resources(cluster, self.cpus_per_cell, self.gpus_per_cell, self.memory_per_cell_gb,
                                  self.max_parallel, use_gpus=all(c.cfg.device != "cpu" for c in cells))
            gpus = f", {cluster.get('GPU', 0):g} GPUs" if cluster.get("GPU") else ""
            info(f"ray: {cluster.get('CPU', 0):g} CPUs{gpus} · {plan.describe()} · {len(cells)} cells")
            if not cells:
                return []
            options = {"num_cpus": plan.cpus, "num_gpus": plan.gpus, "max_retries": self.retries,
                       "retry_exceptions": False}  # a cell's own error would only come back
            if plan.memory_bytes:
                options["memory"] = plan.memory_bytes
            task = ray.remote(run_cell).options(**options)
            work_ref = ray.put(work)  # the data split travels once, not once per cell
            threads = max(1, int(plan.cpus))
            return dispatch(ray, cells, lambda cell: task.remote(work_ref, cell, threads), plan.at_once, self.retries)


def run_cell(work: Work, cell: Cell, threads: int) -> dict | None:
    """The body of a Ray task: one cell, in a worker process, with `threads` torch threads (one per CPU it
    holds). The thread count is part of what a CPU run computes: torch splits its sums by thread, so 1 and 2
    threads differ in the 6th-7th digit; a cell equals, weight for weight, a serial run with as many threads.
    A retried cell first waits for its folder: the lock of the worker that died goes with it, but loader
    processes it had forked hold it a few seconds more, and the run would otherwise refuse the folder as in use."""
    torch.set_num_threads(threads)
    with folder_lock(cell.directory, timeout=LOCK_WAIT_S):
        pass
    return work(cell)


@contextmanager
def connected(ray, executor: RayExecutor) -> Iterator[dict[str, float]]:
    """Ray, connected: to `executor.address`, to the instance this process already runs, or to a new local one
    (shut down again at the end). Yields the cluster's resource totals. Workers' own output stays in Ray's logs
    (`/tmp/ray/session_latest/logs`): the driver shows one view of the whole experiment instead."""
    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(**init_arguments(executor))
        except Exception as e:  # (Ray raises plain Exceptions too, e.g. a node that did not start in time)
            where = executor.address or "a local Ray instance"
            raise HeadstartError(f"could not start Ray on {where}: {one_line(e)}; check --address "
                                 "(a running cluster: ray start --head) or drop it for a local one") from None
    try:
        yield ray.cluster_resources()
    finally:
        if owned:
            ray.shutdown()


def init_arguments(executor: RayExecutor) -> dict:
    """ray.init's arguments: a cluster is joined as it is; a local instance gets the cores and GPUs asked for (all
    by default) and no dashboard. The workers' output stays in Ray's logs either way."""
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    if executor.address:
        return {"address": executor.address, **quiet}
    return {"num_cpus": executor.num_cpus, "num_gpus": executor.num_gpus, "include_dashboard": False, **quiet}


def dispatch(ray, cells: list[Cell], submit: Callable[[Cell], object], at_once: int,
             retries: int) -> list[CellOutcome]:
    """Keep `at_once` cells in flight until every cell has an outcome; one progress view for all of them."""
    queued = deque(cells)
    in_flight: dict[object, tuple[Cell, float]] = {}
    outcomes: list[CellOutcome] = []
    with cells_view(len(cells)) as view:
        try:
            while queued or in_flight:
                while queued and len(in_flight) < at_once:
                    cell = queued.popleft()
                    in_flight[submit(cell)] = (cell, time.monotonic())
                view.show(done=sum(not o.failed for o in outcomes), failed=sum(o.failed for o in outcomes),
                          running=len(in_flight))
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell, started = in_flight.pop(ref)
                    outcomes.append(collect(ray, ref, cell, time.monotonic() - started, retries))
                    report(outcomes[-1])
        except KeyboardInterrupt:
            cancel(ray, list(in_flight))
            info(f"interrupted: {len(in_flight) + len(queued)} cells left; run the same command again to finish "
                 "them (finished runs are kept, interrupted ones resume from their last epoch)")
            raise
    return outcomes


def collect(ray, ref, cell: Cell, seconds: float, retries: int) -> CellOutcome:
    """The outcome of a finished task: its run, the error the cell raised, or the death of its last worker."""
    try:
        run = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the cell raised: its own error
        cause = getattr(e, "cause", None) or e
        return CellOutcome(cell, error=one_line(cause), details=str(e), seconds=seconds)
    except ray.exceptions.RayError as e:  # the worker died on every attempt, or the node was lost
        return CellOutcome(cell, error=f"its worker died {retries + 1} times ({type(e).__name__}); see Ray's logs",
                           details=str(e), seconds=seconds)
    if run is not None and run.get("interrupted"):  # stopped from outside (a SIGTERM on its node): not finished
        return CellOutcome(cell, error="interrupted before its last epoch: run the command again to resume it",
                           seconds=seconds)
    return CellOutcome(cell, run=run, seconds=seconds)


def report(outcome: CellOutcome) -> None:
    if outcome.failed:
        warn(f"{outcome.cell.name} failed: {escape(outcome.error)} (the other cells go on)")
        return
    run = outcome.run or {}
    figure = (f"test {run['test_metric'].replace('_', ' ')} {run['test_' + run['test_metric']]:.3f}"
              if run.get("test_metric") else f"best val accuracy {run.get('val_accuracy_best', 0):.3f}")
    info(f"done {outcome.cell.name}: {figure} · {outcome.seconds:.0f}s")


def cancel(ray, refs: list) -> None:
    """Cancel the cells in flight: a queued one never starts; a running one gets a KeyboardInterrupt, which the
    training loop answers by saving its resume point; then wait (a while) for them to have done so."""
    for ref in refs:
        ray.cancel(ref)  # not force: a killed worker would lose the epoch in progress
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
