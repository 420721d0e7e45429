"""Ctrl-C and SIGTERM during training: the first asks the run to save and stop after the
current step (or before the end step's samples); a second interrupts at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class StopFlag:
    """Set by the first Ctrl-C / SIGTERM. `requested` is this process's flag; calling the
    flag asks every process (a collective in a multi-process run: all must call it)."""

    def __init__(self, device: Any) -> None:
        self.requested = False
        self.device = device  # the process group's device (NCCL reduces CUDA tensors only)

    def __call__(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(self.requested)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested


@contextmanager
def stop_requests(device: Any) -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a request to save and stop after this step
    (or, in the end step, before the before/after samples).

    A second Ctrl-C interrupts at once. In a multi-process run all processes agree (the
    request is all-reduced) so they save the same step.
    """
    flag = StopFlag(device)

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
