"""Launches that would silently run fewer processes than asked for."""

from __future__ import annotations

import os

__all__ = ["accelerate_cpu_without_mpi", "check_accelerate_cpu_launch"]

#: Variables through which launchers (torchrun, mpirun flavours) give each process the number of processes.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def accelerate_cpu_without_mpi() -> bool:
    """Whether ``accelerate launch --cpu --num_processes N`` (N > 1) fell back to one process (no mpirun).

    accelerate then runs the script once with ``ACCELERATE_USE_CPU`` and, since N > 1, ``MASTER_ADDR``/
    ``MASTER_PORT``, but no launcher set a number of processes: every `PartialState` sees a world of one.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes"):
        return False
    if "MASTER_PORT" not in os.environ:
        return False
    return not any(name in os.environ for name in WORLD_SIZE_VARIABLES)


def check_accelerate_cpu_launch() -> None:
    """Raise a `ValueError` saying what happened and what to launch instead (see `accelerate_cpu_without_mpi`)."""
    if accelerate_cpu_without_mpi():
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` (N > 1) runs CPU jobs of several processes through mpirun "
            "(--mpirun_hostfile); without it accelerate started this script once, as a single process. On CPUs use "
            "`accelerate launch --multi_gpu --num_processes N` (gloo) or `torchrun --nproc_per_node N`, with "
            "use_cpu=True; or drop --num_processes for one process (see docs/distributed.md)."
        )
