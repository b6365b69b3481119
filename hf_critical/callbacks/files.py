"""Checkpoint files of the dynamics callback and the helpers they share: hard links, barriers, shard sums.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import torch

from ..io.tensor_file import TensorFile, write_tensors
from ..metrics.reductions import local_shard
from ..names import DYNAMICS_STATE_KEY, GRAD_SNAPSHOT_FILE, INITIAL_WEIGHTS_FILE


class CheckpointFilesMixin:
    """The files `DynamicsCallback` keeps beside the model: the initial weights and the kept gradient.

    Written into ``output_dir`` and every checkpoint (once per node, or per rank for sharded tensors), read
    back on resume. Mixed into `DynamicsCallback`, whose fields (``selection``, ``_initial``, ``_snapshot``,
    ``_reduce``, ``initial_weights``, ``layers``) it reads.
    """

    def _before_checkpoint(self, args, state) -> None:
        """Runs just before the Trainer writes a checkpoint (it writes trainer_state.json last).

        The state goes into trainer_state.json; a gradient kept for the next step's predictability is
        written into the checkpoint folder first, so a checkpoint with a trainer_state.json is whole.
        """
        state.stateful_callbacks[DYNAMICS_STATE_KEY] = self.state()
        # Replicated tensors: written where the Trainer writes the model (the main process, or each node's
        # with save_on_each_node); sharded ones: every rank its own shards.
        writes = args.should_save or self._reduce is not None
        if not writes or self.selection is None:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        if self._initial is not None:
            # A checkpoint carries the initial weights, so it resumes from any folder (a hard link: no extra disk).
            link_or_copy(self._initial_path(args), os.path.join(folder, self._per_rank_name(INITIAL_WEIGHTS_FILE)))
        if self._snapshot is not None:
            tensors = [
                (name, local_shard(g)) for name, g in zip(self.selection.names, self._snapshot[1]) if g is not None
            ]
            path = os.path.join(folder, self._per_rank_name(GRAD_SNAPSHOT_FILE))
            write_tensors(path, tensors, {"step": str(self._snapshot[0])})

    def _per_rank_name(self, filename: str) -> str:
        """``filename``, or ``<stem>.rank<R>.<ext>`` when the measured tensors are sharded (one file per rank)."""
        if self._reduce is None:
            return filename
        import torch.distributed as dist

        stem, ext = os.path.splitext(filename)
        return f"{stem}.rank{dist.get_rank()}{ext}"


    def _initial_path(self, args) -> str:
        return os.path.join(args.output_dir, self._per_rank_name(INITIAL_WEIGHTS_FILE))

    def _writes_node_copy(self, state) -> bool:
        """Whether this process writes its node's copy of the files every rank reads (node-local disks)."""
        return state.is_local_process_zero or self._reduce is not None

    def _take_initial(self, args, state) -> Mapping[str, torch.Tensor]:
        path = self._initial_path(args)
        params = {name: local_shard(p) for name, p in self.selection.parameters.items()}
        if self._writes_node_copy(state):
            # Written at every start, once per node: "disk" reads it at each measurement, checkpoints link it.
            os.makedirs(args.output_dir, exist_ok=True)
            write_tensors(path, params.items(), {"layers": self.layers})
        barrier()  # the other ranks of the node read the file its local main process wrote
        if self.initial_weights == "disk" or self.sketch_dim is not None:
            return TensorFile(path, devices={name: p.device for name, p in params.items()})
        return {name: p.detach().to(self._initial_device(p), copy=True) for name, p in params.items()}

    def _initial_device(self, param: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.initial_weights == "host" else param.device

    def _load_initial(self, args, state) -> Mapping[str, torch.Tensor]:
        name = self._per_rank_name(INITIAL_WEIGHTS_FILE)
        path = self._initial_path(args)
        candidates = [os.path.join(self.resume_checkpoint, name)] if self.resume_checkpoint else []
        candidates.append(path)
        source = next((c for c in candidates if os.path.isfile(c)), None)
        if source is None:
            raise FileNotFoundError(
                "Resuming with layer_rotation needs the initial weights saved at the start of the run; none of "
                f"{candidates} exists (was the run started with layer_rotation off?)."
            )
        params = {name: local_shard(p) for name, p in self.selection.parameters.items()}
        stored = TensorFile(source)
        missing = [n for n in params if n not in stored]
        if missing:
            raise ValueError(f"{source} lacks the initial weights of {missing[:3]} (layer selection changed on resume?)")
        barrier()  # every rank has checked the file before its node's copy may be replaced
        if self._writes_node_copy(state) and os.path.abspath(source) != os.path.abspath(path):
            # This output_dir's copy (read at each measurement, linked into the next checkpoints) is the checkpoint's.
            os.makedirs(args.output_dir, exist_ok=True)
            link_or_copy(source, path)
        barrier()
        stored = TensorFile(path, devices={name: p.device for name, p in params.items()})
        if self.initial_weights == "disk" or self.sketch_dim is not None:
            return stored
        # copy=True: "host" holds a copy in memory, not a map of the file.
        return {n: stored[n].to(device=self._initial_device(p), dtype=p.dtype, copy=True) for n, p in params.items()}



def shard_reduction(params: Iterable[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For sharded parameters (DTensor, FSDP2): a function that sums per-layer partial sums across the shard group.

    ``None`` for ordinary (replicated) tensors. Every measured parameter must be sharded on the same
    one-dimensional mesh; HSDP (a 2-D mesh: replicas of a sharded model) is refused because a sum over
    the whole mesh would count each shard once per replica.
    """
    meshes = []
    for mesh in (getattr(p, "device_mesh", None) for p in params):
        if mesh is not None and not any(mesh == seen for seen in meshes):  # each fully_shard call builds its own
            meshes.append(mesh)
    if not meshes:
        return None
    if len(meshes) > 1:
        raise ValueError("the measured parameters are sharded over different device meshes; hf_critical needs one")
    (mesh,) = meshes
    if mesh.ndim != 1:
        raise ValueError(
            f"the measured parameters live on a {mesh.ndim}-D device mesh (HSDP?); hf_critical's sharded metrics "
            "support a 1-D mesh (FSDP full sharding). See docs/distributed.md."
        )
    group = mesh.get_group()

    def reduce(partial: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(partial, group=group)
        return partial

    return reduce


def link_or_copy(source: str, target: str) -> None:
    """Make ``target`` hold the bytes of ``source``: a hard link where the filesystem allows it, else a copy.

    Replaced atomically (a reader sees the old file or the new one); the same file is left alone.
    """
    import shutil
    import socket

    if os.path.exists(target) and os.path.samefile(source, target):
        return
    tmp = f"{target}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
