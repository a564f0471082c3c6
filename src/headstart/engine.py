"""Where the training loop runs: one device, or several processes with data parallelism (Lightning Fabric).

headstart does not write its own distributed machinery. Lightning Fabric starts the processes (it re-runs the
same command once per extra device), sets up the process group, puts each process on its device and wraps the
model in DistributedDataParallel; the loop in `train.py` stays a plain loop that calls `fabric.backward(loss)`
where it would call `loss.backward()`. With one device (the default) Fabric only places the model and the
batches, and a run is the same run it would be without it.

What data parallelism means here, in words:
- `batch_size` stays the *global* batch: each of N processes takes batch_size / N images per step, so the
  number of steps, the learning-rate schedule and the recipe are the same on 1 GPU or 8.
- Each process sees its own shard of the training images every epoch (a DistributedSampler seeded with the
  run's seed); every process evaluates the whole (small) validation set, so they all take the same decisions
  (best epoch, early stopping) without talking to each other.
- When a phase unfreezes more groups, the model is wrapped anew: DDP only synchronises the gradients of
  parameters that were trainable when it was built (a frozen-then-unfrozen group would silently drift apart
  between processes otherwise). `check_replicas_agree` proves it at the end of every multi-process run.
- Only the first process writes files and prints.
- Ctrl-C (or SIGTERM) asks, it does not interrupt: inside the training loop (`catch_interrupts`) a signal only
  sets a flag, and after every step all processes agree through one all-reduce whether any was asked to stop
  (`stop_requested`), so they leave the loop after the same step. The first process, at its exit, closes the
  process group (a process still waiting in a collective fails at once instead of after gloo's 30 minutes) and
  waits for the others (`release_the_others`).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from headstart.console import console
from headstart.errors import HeadstartError

_STARTED: dict[tuple, object] = {}  # one launch per process: Fabric re-runs the command, it must not do so twice
_STOP = threading.Event()  # set by `catch_interrupts`' signal handler; signals are per process, so is the flag
# How long the first process waits, at its exit, for the others to end on their own. They have no report to
# write: after a Ctrl-C they were gone 4-5 s before the first (2 cores, loaded); this bounds what went wrong.
OTHERS_GRACE_S = 60.0


def pick_device(name: str = "auto") -> torch.device:
    """'auto': the GPU when there is one, else the CPU; anything else as torch spells it ('cpu', 'cuda:1', 'mps')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start(device: str = "auto", devices: int = 1):
    """A launched Fabric for `devices` processes on `device`'s kind of accelerator (cached per process).

    With devices > 1 this call starts the other processes, each running the same command from the start; in
    each, it returns that process's Fabric. Processes other than the first stop printing."""
    from lightning_fabric import Fabric

    key = (device, devices)
    if key in _STARTED:
        return _STARTED[key]
    if any(f.world_size > 1 for f in _STARTED.values()):
        raise HeadstartError("this process already runs as one of several (--devices); start another program for a "
                             f"run on device={device!r}, devices={devices}")
    if devices < 1:
        raise HeadstartError("--devices must be at least 1")
    dev = pick_device(device)
    if devices > 1 and "ipykernel" in sys.modules:
        raise HeadstartError(f"--devices {devices} starts processes by running the program again: call it from a "
                             "script or the headstart CLI, not from a notebook")
    if devices > 1:
        if dev.type == "cuda" and torch.cuda.device_count() < devices:
            raise HeadstartError(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if dev.type not in ("cuda", "cpu"):
            raise HeadstartError(f"--devices {devices} runs on CUDA GPUs (or CPU processes for testing), not {dev.type}")
        fabric = Fabric(accelerator=dev.type, devices=devices, strategy="ddp", precision="32-true")
    else:
        index = [dev.index] if dev.type == "cuda" and dev.index is not None else 1
        fabric = Fabric(accelerator=dev.type, devices=index, precision="32-true")
    fabric.launch()
    others = getattr(fabric.strategy.launcher, "procs", [])  # the processes this one started (the first only)
    if others:
        atexit.register(release_the_others, others, OTHERS_GRACE_S)
    if fabric.world_size > 1:
        if dev.type == "cpu":  # N processes share the cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // fabric.world_size))
        if not fabric.is_global_zero:
            console.quiet = True
    _STARTED[key] = fabric
    return fabric


def shard_sampler(dataset, fabric, seed: int):
    """This process's share of the training set, reshuffled every epoch (Fabric calls set_epoch); None with
    one process, where the DataLoader shuffles with the run's own generator as it always has."""
    if fabric.world_size == 1:
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=fabric.world_size, rank=fabric.global_rank, shuffle=True, seed=seed)


def sum_over_processes(fabric, *values: float) -> list[float]:
    """Per-process sums (loss, correct, seen) added up over every process: the epoch's figures on all images."""
    total = torch.tensor(values, dtype=torch.float64, device=fabric.device)
    if fabric.world_size > 1:
        total = fabric.all_reduce(total, reduce_op="sum")
    return total.tolist()


def check_replicas_agree(fabric, model: torch.nn.Module) -> None:
    """Every process must end with the same weights; if not, data parallelism went wrong (e.g. a group that
    unfroze without DDP knowing) and the run is not to be trusted."""
    if fabric.world_size == 1:
        return
    from torch.distributed import ReduceOp

    with torch.no_grad():
        fingerprint = torch.stack([p.double().sum() for p in model.parameters()]).to(fabric.device)
    highest = fabric.all_reduce(fingerprint.clone(), reduce_op=ReduceOp.MAX)
    lowest = fabric.all_reduce(fingerprint.clone(), reduce_op=ReduceOp.MIN)
    if not torch.equal(highest, lowest):
        raise RuntimeError("the processes ended with different weights: data-parallel training went wrong")


@contextmanager
def catch_interrupts() -> Iterator[None]:
    """Within this block Ctrl-C (SIGINT) and SIGTERM ask training to stop; `stop_requested` says so at the end
    of the step, in every process at once. A second signal raises KeyboardInterrupt at once, for a person who
    will not wait (a step is short, a feature cache being filled is not).

    Why not let KeyboardInterrupt fly where it lands: with several processes, one leaves the loop while
    another sits in a collective (DDP's buffer broadcast before the forward pass, the gradient all-reduce)
    that cannot complete; that one cannot even run its own signal handler, and waits until the first has
    written its run and exited (5-21 s on 2 cores beside two CPU hogs, growing with the load: a test's fixed
    minute ran out on a loaded machine). In any process it can also land between the weights and the config
    of a checkpoint, which then has no config.
    DataLoader workers must be forked inside the block (the loop starts them there): forked before it, they
    die of the terminal's Ctrl-C and the step waiting for their batch fails ("DataLoader worker exited
    unexpectedly"). Signal handlers belong to the main thread: from another thread, this block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def ask_to_stop(signum: int, frame) -> None:
        """Note the request; raise only when asked a second time. DataLoader workers forked inside the block
        inherit this handler and ignore the signal: their process serves the step, it decides when to stop.
        The notice goes out with os.write: a print could re-enter a stream the main code was writing to."""
        if os.getpid() != owner:
            return
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()
        if not console.quiet:
            os.write(2, b"\nstopping after this step, keeping the best checkpoint (again: stop at once)\n")

    _STOP.clear()
    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.clear()


def stop_requested(fabric) -> bool:
    """Whether any process was asked to stop (Ctrl-C, SIGTERM) inside `catch_interrupts`.

    Every process must call it at the same point of the same step: with several processes the answer is the
    maximum of one number over all of them (one small all-reduce per step), so a signal that reached only
    one process, or reached them during different parts of the step, still stops all of them after the same
    step. With one process it reads the flag and costs nothing."""
    asked = _STOP.is_set()
    if fabric.world_size == 1:
        return asked
    flag = torch.tensor([1.0 if asked else 0.0], device=fabric.device)
    return bool(fabric.all_reduce(flag, reduce_op="max").item())


def release_the_others(others: list[subprocess.Popen], grace_s: float) -> None:
    """At the first process's exit (atexit): end the run for every process it started.

    It closes the process group first, so another process waiting for this one in a collective fails at
    once (measured: 0.0 s) instead of after the group's timeout; a process that died is noticed by gloo
    anyway (0.2 s). Then it waits for them, at most `grace_s` in all, and kills what is left, so that when
    the command returns, the run's processes are gone (no orphan keeps training or holding the terminal)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    deadline = time.monotonic() + grace_s
    for proc in others:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGTERM would only ask; a process stuck in native code never reads it
            proc.wait()
