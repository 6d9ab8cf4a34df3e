"""Small machinery shared by the sections: time limits, memory, batch search, process groups."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist


class SectionTimeout(BaseException):
    """Raised by the alarm when a section overruns its budget (a BaseException, so the
    per-check `except Exception` does not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; no limit where
    signals cannot be used). Python code is interrupted between bytecodes, so a long CUDA
    kernel or a C call finishes first."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Drop what the last model left: Python garbage, then the CUDA caching allocator's
    free blocks (so the next model's batch search sees the whole card)."""
    gc.collect()
    if device.type == "cuda":
        # A sticky CUDA error (an illegal access) resurfaces here; the check that caused it
        # has recorded it, and the report must still be written.
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or an allocation failure reported as a RuntimeError
    (cuBLAS / cuDNN workspaces, NCCL buffers)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text
                                              or "CUBLAS_STATUS_ALLOC_FAILED" in text)


T = TypeVar("T")


def largest_batch(attempt: Callable[[int], T], start: int, minimum: int,
                  release: Callable[[], None]) -> tuple[int, T, list[int]]:
    """attempt(start), attempt(start // 2), ... until one does not run out of memory.

    Returns (batch, what attempt returned, batches tried). `release` runs after each
    out-of-memory failure, outside the except block: while the exception is being handled
    its traceback still holds the failed attempt's tensors.
    """
    batch, tried = start, []
    while batch >= minimum:
        tried.append(batch)
        try:
            return batch, attempt(batch), tried
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
            if not is_oom(err):
                raise
        release()
        batch //= 2
    raise RuntimeError(f"out of memory at every batch from {start} down to {minimum}")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def single_process_group(backend: str, device: torch.device, timeout_s: float
                         ) -> Iterator[None]:
    """A process group of one rank, initialised as the job's (env:// with MASTER_ADDR and
    MASTER_PORT, here a free local port); destroyed and the environment restored on exit.
    timeout_s: the collectives' timeout, shorter than what is left of the section (the
    section's alarm cannot interrupt a blocked collective)."""
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    keys = ("MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method="env://", rank=0, world_size=1,
                                timeout=timedelta(seconds=max(1.0, timeout_s)))
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)




@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
