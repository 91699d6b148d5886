"""Training on several processes (GPUs, or CPU processes with gloo): ``torchrun --nproc_per_node N -m posecast
train ...`` or ``posecast train --nproc N``.

Data parallel, as DistributedDataParallel does it: every rank holds the same networks (DDP broadcasts rank 0's
at the start) and the same random state for *which* clips an iteration trains on; each rank loads and generates
only its share of the iteration's ``batch_size`` clips (each clip augmented from a seed of its own, so the split
does not change the data), and the gradients are averaged across ranks in the backward pass. The schedules
(learning rate, clip length, GAN phase) follow rank 0's clock, broadcast every iteration, so every rank takes the
same step; rank 0 alone writes checkpoints, samples and TensorBoard. gloo on CPUs, NCCL on CUDA (one GPU per
rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank ``rank`` of ``world`` (``local_rank`` on its machine)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    grouped: bool = False       # joined a process group (torchrun), even one of a single process

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    @property
    def on(self) -> bool:
        """Data parallel: under torchrun (networks in DDP), also with one process (``--nproc_per_node 1``)."""
        return self.grouped or self.world > 1

    def share(self, batch: int) -> range:
        """This rank's clips of a ``batch``-clip iteration (batch divisible by the world size)."""
        per = batch // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the value itself on a single process)."""
        if not self.on:
            return value
        # NCCL moves CUDA tensors only (its group has no CPU backend): the value goes through this rank's GPU
        on = f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(value)], dtype=torch.float64, device=on)
        dist.broadcast(t, 0)
        return float(t.item())


def init_from_env(device: str) -> Dist:
    """The run's ranks from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); joins the process group when
    launched by torchrun (one process too: a 1-GPU DDP run). ``device``: the TrainConfig device ("cpu": gloo; CUDA: NCCL)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:   # a plain process, not launched by torchrun (a
        return Dist()                                            # scheduler's RANK alone does not make a group)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, grouped=True)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def synced(module: torch.nn.Module, d: Dist, device: torch.device, *, unused: bool = False) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel on a multi-process run (itself otherwise). ``unused``: some
    parameters may get no gradient in an iteration (find_unused_parameters)."""
    if not d.on:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)


class Rollout(torch.nn.Module):
    """A generator's ``rollout`` as a module's forward (DDP synchronises what goes through ``forward``)."""

    def __init__(self, G: torch.nn.Module):
        super().__init__()
        self.G = G

    def forward(self, labels, landmarks=None):
        return self.G.rollout(labels, landmarks=landmarks)


class TemporalAll(torch.nn.Module):
    """The temporal discriminator on every usable spacing in one forward (DDP wants one forward per backward)."""

    def __init__(self, DT: torch.nn.Module):
        super().__init__()
        self.DT = DT

    def forward(self, items):
        """items: (spacing index, frames, flows) -> their outputs."""
        return [self.DT(frames, flows, si) for si, frames, flows in items]

