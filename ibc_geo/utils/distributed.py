r"""Several processes, one batch graph: ``torch.distributed`` under ``torchrun`` (NCCL on GPUs, gloo on CPUs).

**The batch stays the config's batch.** ``P x K`` is the global batch; each rank embeds its slice
(:class:`~ibc_geo.data.PKSampler`), :func:`gather_with_grad` all-gathers the slices *with* autograd,
and every rank builds the same ``B``-node graph, runs the MPN and both losses over all ``B`` nodes.
The MPN's dropout draws are the same on every rank because every rank starts from the same seed
and consumes torch's RNG in the same order (the backbone draws nothing; augmentation runs on
per-sample seeds in forked RNGs), as a single process does.

**Why the gradients are exactly the single-process ones.** Every rank computes the same loss
:math:`L` over all ``B`` nodes. The backward of the all-gather sums, over the ranks, the gradients
arriving at each rank's slice: rank ``r`` receives :math:`N \, \partial L / \partial f_r` (``N``
ranks, each contributing the same :math:`\partial L / \partial f_r`). Backpropagated through the
backbone, rank ``r``'s parameter gradient is ``N`` times the contribution of its slice; DDP then
*averages* over ranks: :math:`\frac{1}{N} \sum_r N g_r = \sum_r g_r`, the full-batch gradient.
Parameters after the gather (MPN, classifiers) get the full gradient on every rank, and the
average of ``N`` equal values is that value. (Libraries that gather *without* autograd train only
the local slice; dividing the loss by ``N`` "to fix the scale" is then where they go wrong.)
The same holds for :class:`SynchronizedBatchNorm2d`, whose statistics are all-reduced with
autograd: the ``N``-fold gradient flows through it like through the gather.
"""
from __future__ import annotations

import os
from typing import Any, List

import torch

from torch import nn

from ibc_geo.utils.runtime import distributed_rank


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), once;
    NCCL for CUDA devices, gloo otherwise. Returns whether this process is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        parent = os.getppid()  # before the rendezvous, which can wait long enough for a re-parenting
        torch.distributed.init_process_group(backend)
        watch_parent(parent=parent)
    return True


def watch_parent(interval: float = 1.0, parent: int | None = None) -> None:
    """End this process (exit code 1, one line on stderr) within ``interval`` seconds of its parent's
    death: a rank whose ``torchrun`` was killed (``kill -9`` leaves no chance to stop the ranks)
    must not train on, still writing into the run folder. Checkpoints are written atomically, so
    stopping at any moment leaves the last one intact."""
    import sys
    import threading
    import time

    parent = os.getppid() if parent is None else parent
    if parent <= 1:
        return

    def stop_if_orphaned() -> None:
        if os.getppid() != parent:
            print(f"error: the launcher of this process (pid {parent}) is gone; rank "
                  f"{os.environ.get('RANK', '?')} stops", file=sys.stderr, flush=True)
            os._exit(1)

    stop_if_orphaned()  # the launcher may have died during the rendezvous

    def watch() -> None:
        while True:
            time.sleep(interval)
            stop_if_orphaned()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def local_device(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA run under torchrun (and made current), else ``device``."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        index = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def is_distributed() -> bool:
    return distributed_rank()[1] > 1


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order along dim 0, differentiable (see the module
    docstring for the gradient's scale); ``x`` itself in a single process."""
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (same shape on every rank) concatenated in rank order, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(distributed_rank()[1])]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * distributed_rank()[1]
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


class SynchronizedBatchNorm2d(nn.BatchNorm2d):
    r"""BatchNorm over the global batch of all ranks, on any device (torch's ``SyncBatchNorm``
    runs on GPUs only): in training the per-channel :math:`\sum x`, :math:`\sum x^2` and counts
    are all-reduced with autograd, then

    .. math::
        \mu = \tfrac{1}{n} \textstyle\sum x, \quad \sigma^2 = \tfrac{1}{n} \textstyle\sum x^2 - \mu^2,
        \quad y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    with the running statistics updated as :class:`torch.nn.BatchNorm2d` does (unbiased variance).
    In a single process, or in eval mode, it is :class:`torch.nn.BatchNorm2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        import torch.distributed.nn.functional as dist_fn

        C = x.size(1)
        # Sums in float64: E[x^2] - E[x]^2 loses digits in float32 (torch's SyncBatchNorm gathers
        # per-rank means and variances instead; in float64 the one-pass formula is exact enough).
        count = torch.full((1,), x.numel() / C, dtype=torch.float64, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3), dtype=torch.float64),
                           (x * x).sum(dim=(0, 2, 3), dtype=torch.float64), count])
        stats = dist_fn.all_reduce(stats)
        n = stats[-1]
        mean64 = stats[:C] / n
        var64 = (stats[C:2 * C] / n - mean64 * mean64).clamp_min(0)
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_((m * var64.detach() * n / (n - 1)).to(x.dtype))
        shape = (1, C, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def synchronize_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` computing global-batch statistics: torch's
    ``SyncBatchNorm`` on CUDA, :class:`SynchronizedBatchNorm2d` elsewhere (same parameters)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SynchronizedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats).to(child.weight.device, child.weight.dtype)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            synchronize_batchnorm(child, device)
    return module


