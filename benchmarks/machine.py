"""What the benchmark scripts print about the machine they ran on (shared by benchmarks/*.py)."""

from __future__ import annotations

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
