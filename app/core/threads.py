"""How many forward passes run at once, and on how many threads each.

On the CPU the default is one worker per core, each pass on one thread: two runtime threads in
one pass work in lockstep, and whenever the event loop takes a core the other waits, while two
one-thread passes share one model's weights and lose less (docs/threads.md has the figures). A
pass that runs alone, with nothing else running or queued, goes to a second runner of the model
on every core instead, so that a lone request does not leave the other cores idle. On a GPU one
worker feeds the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from app.config import Settings
from app.core.planner import CPU_OVERHEAD_TOKENS_PER_THREAD, PASS_OVERHEAD_TOKENS


def available_cores() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which ``os.cpu_count()`` does not see)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return count


class ThreadPlan(NamedTuple):
    workers: int  # forward passes run at once
    intra_op_threads: int  # runtime threads inside each pass
    pass_overhead_tokens: int  # a pass's fixed cost in tokens, which the batch planner weighs
    lone_threads: int = 0  # threads for a pass that runs alone; 0: no such pass


def thread_plan(settings: Settings, *, on_gpu: bool) -> ThreadPlan:
    """The settings' thread layout, with each ``0`` (automatic) filled in for this machine."""
    cores = available_cores()
    workers = settings.inference_workers or (1 if on_gpu else cores)
    intra = settings.intra_op_threads or max(1, cores // workers)
    measured = PASS_OVERHEAD_TOKENS if on_gpu else CPU_OVERHEAD_TOKENS_PER_THREAD * intra
    overhead = settings.pass_overhead_tokens or measured
    lone = 0 if on_gpu else settings.lone_pass_threads or cores
    return ThreadPlan(workers, intra, overhead, lone if lone > intra else 0)
