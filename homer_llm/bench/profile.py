"""Profile one HOMER compression: where the time goes, and how many host synchronisations it does.

A host sync (``aten::_local_scalar_dense``: ``int(tensor)``, ``.item()``, a Python ``if`` on a
device value) makes the CPU wait for the GPU, so the next kernels cannot be queued ahead: the
GPU idles while Python launches them. Copies from host to device (``aten::copy_`` of CPU tensors)
are counted too. Both are countable on the CPU as well, which is how they were counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from .runner import Bench

SYNC_OPS = ("aten::_local_scalar_dense",)


@dataclass(frozen=True)
class ProfileSummary:
    """Counts from one profiled compression, and the profiler's top-ops table.

    Attributes:
        length: input tokens.
        nodes: tree nodes (2N - 1).
        host_syncs: calls of aten::_local_scalar_dense (each a device-to-host wait on CUDA).
        kernels_launched: CUDA kernel launches (0 on the CPU).
        layer_calls: decoder-layer calls (sum of every node's layer range).
        table: the profiler's table sorted by device time (CPU time on the CPU).
    """

    length: int
    nodes: int
    host_syncs: int
    kernels_launched: int
    layer_calls: int
    table: str

    def format(self) -> str:
        head = (
            f"# profile: HOMER at {self.length} tokens: {self.nodes} nodes, {self.layer_calls} layer calls, "
            f"{self.host_syncs} host syncs, {self.kernels_launched} CUDA kernel launches"
        )
        return head + "\n" + self.table


def profile_homer(bench: Bench, length: int, rows: int = 25) -> ProfileSummary:
    """Run one warm-up and one profiled HOMER compression of ``length`` tokens."""
    fn, _ = bench._method("homer", length)
    plan = bench.plan(length)
    cuda = bench.device.type == "cuda"
    with torch.inference_mode():
        fn()  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            fn()
            if cuda:
                torch.cuda.synchronize(bench.device)
    events = prof.key_averages()
    syncs = sum(e.count for e in events if e.key in SYNC_OPS)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    nodes = plan.nodes()
    layer_calls = sum(n.layer_end - n.layer_start for n in nodes)
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    return ProfileSummary(length, len(nodes), syncs, launches, layer_calls, events.table(sort_by=sort, row_limit=rows))
