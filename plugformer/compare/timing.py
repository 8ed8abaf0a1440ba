"""Wall-clock time and peak memory of model steps, measured so that variants compare fairly.

Time: `time_interleaved` runs the variants round-robin — one call of each, then the next
repeat — so that a noisy moment of a shared machine hits every variant alike, and reports the
median of the repeats after an untimed warm-up call of each.

Memory (`peak_memory`): on CUDA, ``torch.cuda.max_memory_allocated`` over the call, less what
was allocated before it. On CPU, ``torch.profiler`` with ``profile_memory=True`` records every
allocation and free of the call; the peak of their running sum is the most tensor memory the call
held at once beyond what existed before it: activations, gradients and temporaries, but not the
parameters or the optimizer state. It counts tensors only (not the Python heap or the allocator's
caching), and is deterministic, unlike a process's resident set size.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch

__all__ = ["time_interleaved", "peak_memory", "MEMORY_METHOD"]

MEMORY_METHOD = {
    "cpu": "torch.profiler(profile_memory=True): peak of the running sum of tensor allocations "
           "during one call, above what was allocated before it",
    "cuda": "torch.cuda.max_memory_allocated during one call, above what was allocated before it",
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(calls: Sequence[Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                     device: torch.device | str = "cpu") -> list[float]:
    """Median seconds per call of each of ``calls``, timed round-robin over ``repeats`` rounds.

    A call that raises is timed no further; its entry is None, and the others go on.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    samples: list[Optional[list[float]]] = [[] for _ in calls]
    for round_ in range(warmup + repeats):
        for index, call in enumerate(calls):
            if samples[index] is None:
                continue
            try:
                _synchronize(device)
                start = time.perf_counter()
                call()
                _synchronize(device)
            except Exception:
                samples[index] = None
                continue
            if round_ >= warmup:
                samples[index].append(time.perf_counter() - start)
    return [None if s is None else statistics.median(s) for s in samples]


def peak_memory(call: Callable[[], object], *, device: torch.device | str = "cpu") -> Optional[int]:
    """Peak bytes of tensor memory that ``call()`` holds at once beyond what existed before it.

    None when the device offers no way to tell (a device other than CPU and CUDA).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 for a moment: the CPU profiler (kineto) writes start/stop lines
    there from C++, which would tear through a progress bar."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
