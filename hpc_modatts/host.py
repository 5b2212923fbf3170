"""What machine a result was measured on.

A demo or benchmark table is reproducible to the last digit only on CPUs that take the same
kernel path: oneDNN and ATen pick their vectorised kernels (AVX2, AVX-512, AMX) at run time, and
each path sums in its own order. So every results file records the CPU model and the kernel
level torch dispatches to, next to the core count that sets each job's threads.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def local_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's name with its family and model numbers, from /proc/cpuinfo on Linux: a virtual
    machine often shows a generic name ("Intel(R) Xeon(R) Processor"), the numbers still tell
    the generation. Elsewhere platform.processor()."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        fields = {}
    if "model name" not in fields:
        return platform.processor() or platform.machine() or "unknown"
    numbers = f" (family {fields['cpu family']} model {fields['model']})" if "cpu family" in fields else ""
    return fields["model name"] + numbers


def host_facts() -> dict[str, str | int]:
    """CPU model, torch's CPU kernel level (e.g. AVX512, AVX2), cores, torch version and the GPU."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": local_cores(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def describe_host(facts: dict[str, str | int] | None = None) -> str:
    """One line for a results table: 'Intel(R) Xeon(R) Processor, AVX512, 2 cores'."""
    f = facts or host_facts()
    gpu = f", GPU {f['gpu']}" if f["gpu"] != "none" else ""
    return f"{f['cpu']}, {f['cpu_capability']}, {f['cores']} cores{gpu}"
