"""What the benchmark scripts print about the machine they ran on (shared by benchmarks/*.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import subprocess
import sys

import torch
import transformers


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else lscpu, else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def machine_description() -> str:
    """CPU, cores, GPU, torch threads and library versions, on one line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()} ({platform.machine()}), {cores} cores; {device}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; transformers {transformers.__version__}; Python {platform.python_version()}"
    )


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


#: mallopt's parameter numbers for the trim and mmap thresholds (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The fixed threshold the timing benchmarks set: blocks below 1 GiB come from the heap (glibc 2.36 accepts it;
#: its own adjustment stops at 32 MiB, which leaves MiniLM's largest blocks, the 45 MiB embedding and its
#: gradient and optimizer states, to the history).
FIXED_MMAP_THRESHOLD = 2**30


def add_allocator_option(parser) -> None:
    """``--allocator fixed|default``: whether a timing benchmark fixes glibc's thresholds (the default)."""
    parser.add_argument(
        "--allocator",
        choices=["fixed", "default"],
        default="fixed",
        help="fixed (default): glibc's mmap and trim thresholds fixed for every run; default: glibc's adaptive ones",
    )


def set_allocator(choice: str) -> str:
    """Apply ``--allocator``; returns the sentence for the report."""
    if choice == "default":
        return "glibc's adaptive malloc thresholds left as they are (--allocator default)."
    return fix_malloc_mmap_threshold()


def fix_malloc_mmap_threshold(threshold: int = FIXED_MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap and trim thresholds for this process; returns a sentence for the report.

    glibc raises its mmap threshold (up to 32 MiB) each time a block it had mapped is freed, after which
    blocks of that size come from the heap and are reused without page faults. So a run's speed depends
    on what the process allocated and freed before it. With the default allocator, MiniLM's plain-Trainer
    steps were about 11 % slower than `CriticalPeriodTrainer` steps that measured nothing, whatever the
    order of the runs (docs/benchmarks.md; which allocation moves the thresholds was not found). Fixing the threshold (which also stops its adjustment) gives every
    configuration the same allocator. Not glibc (macOS, musl): nothing is changed, and the sentence says so.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        fixed = (
            mallopt is not None
            and platform.libc_ver()[0] == "glibc"
            # glibc's adjustment keeps the trim threshold at twice the mmap threshold; fixed, both are set.
            and mallopt(_M_MMAP_THRESHOLD, threshold) == 1
            and mallopt(_M_TRIM_THRESHOLD, 2 * threshold - 1) == 1
        )
    except OSError:
        fixed = False
    if fixed:
        return (
            f"glibc's mmap threshold fixed at {threshold // 2**20} MiB and its trim threshold at twice that for the timed "
            "runs (every configuration sees the same allocator)."
        )
    return "glibc's malloc thresholds not fixed (no glibc): run-to-run differences may include the allocator's history."
