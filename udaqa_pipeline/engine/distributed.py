"""DDP for stage two, in one place: process group set-up, the heads' wrapper, gradient and
buffer sync of a trainable source, the all-reduced loss sums and the end-of-run agreement check.

Under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across ranks (gloo on CPU, nccl on
CUDA); losses are all-reduced so every rank takes the same curriculum decisions; after each epoch
rank 0's buffers (BatchNorm statistics) of the heads and of the trainable source are broadcast; a
trainable source's gradients are averaged across ranks (DDP wraps the heads only); rank 0 writes
the checkpoint and the log.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def buffers(*modules: nn.Module | None) -> list[torch.Tensor]:
    return [b for m in modules if m is not None for b in m.buffers()]


def wrap(model: nn.Module, source: nn.Module | None, device: str, world: int) -> nn.Module:
    """The heads as the loop calls them: ``model`` itself, or under DDP its wrapper (which
    broadcasts the heads from rank 0; a trainable ``source`` is broadcast here so it starts equal)."""
    if world <= 1:
        return model
    net = nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index]
                                              if device.startswith("cuda") else None)
    if source is not None:
        with torch.no_grad():
            for t in list(source.parameters()) + buffers(source):
                dist.broadcast(t.data, 0)
    return net


def allreduce_grads(module: nn.Module, world: int) -> None:
    """Average the gradients of a trainable source across ranks (DDP only syncs the heads). A source
    that steps inside backward and clears its gradients (finetune's Backbone) leaves nothing here."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def allreduce_sums(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    keys = sorted(sums)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([sums[k] for k in keys] + [float(n)], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return {k: float(t[i]) for i, k in enumerate(keys)}, int(t[-1])


def broadcast_buffers(*modules: nn.Module | None) -> None:
    """Rank 0's buffers (BatchNorm running statistics differ per rank) become every rank's."""
    for buf in buffers(*modules):
        dist.broadcast(buf, 0)


def check_ranks_agree(model: nn.Module, source: nn.Module | None = None) -> None:
    """Raise if DDP ranks ended with different weights or buffers, heads and trainable source alike
    (gradient sync or buffer broadcast broken)."""
    states = [model.state_dict()] + ([source.state_dict()] if source is not None else [])
    total = torch.stack([p.detach().double().sum() for sd in states for p in sd.values()
                         if p.is_floating_point()]).sum().reshape(1)
    got = [torch.zeros(1, dtype=torch.float64, device=total.device) for _ in range(dist.get_world_size())]
    dist.all_gather(got, total)
    if any(not torch.equal(g, got[0]) for g in got):
        raise RuntimeError(f"DDP ranks diverged: parameter checksums {[float(g) for g in got]}")


def finish(model: nn.Module, source: nn.Module | None, world: int) -> None:
    """End of a run under DDP: check the ranks agree, then wait for every rank."""
    if world > 1:
        check_ranks_agree(model, source)
        dist.barrier()
