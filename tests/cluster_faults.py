"""Faults for the Ray executor's tests, planted in a cell as it runs in a worker process.

`compare` hands each cell `pipeline.train` as `CellWork.train` (compare.train_run at the time of the call), so a
test that replaces compare.train_run with one of these callables has it run inside the Ray task. They are plain
picklable objects (the test registers this module to be pickled by value: workers cannot import tests/), and they
keep their state in files, since every attempt of a cell may run in another process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DieOnce:
    """pipeline.train, except that the first attempt of cell (`strategy`, `seed`) kills its worker process right
    before optimizer step `at_step`; later attempts write how many epochs their resume point held into `log`."""

    strategy: str
    seed: int
    at_step: int
    log: Path

    def __call__(self, splits, cfg, directory, **kwargs):
        from headstart.pipeline import train
        from headstart.runs import load_resume_point

        if (cfg.strategy, cfg.seed) != (self.strategy, self.seed):
            return train(splits, cfg, directory, **kwargs)
        if self.log.exists():  # a retry: the worker before this one died
            saved = load_resume_point(directory)
            self.log.write_text(self.log.read_text() + f"retry from epoch {saved[0]['epochs_done'] if saved else 0}\n")
            return train(splits, cfg, directory, **kwargs)
        self.log.write_text("attempt 1\n")
        original, steps = torch.optim.AdamW.step, [0]

        def step(optimizer, *args, **kw):
            steps[0] += 1
            if steps[0] == self.at_step:
                os._exit(1)  # the worker dies: no exception, no cleanup, as if killed
            return original(optimizer, *args, **kw)

        torch.optim.AdamW.step = step
        try:
            return train(splits, cfg, directory, **kwargs)
        finally:
            torch.optim.AdamW.step = original


@dataclass(frozen=True)
class BadDataIn:
    """pipeline.train, except that cell (`strategy`, `seed`) raises the way unreadable data does; every attempt
    is counted in `log` (an error of the cell's own must not be retried)."""

    strategy: str
    seed: int
    log: Path

    def __call__(self, splits, cfg, directory, **kwargs):
        from headstart.pipeline import train

        if (cfg.strategy, cfg.seed) == (self.strategy, self.seed):
            self.log.write_text((self.log.read_text() if self.log.exists() else "") + "attempt\n")
            raise ValueError(f"bad data: cannot identify image file {directory / 'broken.png'}")
        return train(splits, cfg, directory, **kwargs)


@dataclass(frozen=True)
class HangIn:
    """pipeline.train, except that cell (`strategy`, `seed`) waits (up to a minute) to be cancelled; it writes
    'started' into `log` when it begins waiting and 'cancelled' when the KeyboardInterrupt of ray.cancel reaches it."""

    strategy: str
    seed: int
    log: Path

    def __call__(self, splits, cfg, directory, **kwargs):
        import time

        from headstart.pipeline import train

        if (cfg.strategy, cfg.seed) != (self.strategy, self.seed):
            return train(splits, cfg, directory, **kwargs)
        self.log.write_text("started\n")
        try:
            for _ in range(600):  # in slices: ray.cancel interrupts the main thread between bytecodes, not a sleep
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.log.write_text("started\ncancelled\n")
            raise
        raise AssertionError("never cancelled")
