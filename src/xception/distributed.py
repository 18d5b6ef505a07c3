"""Distributed data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Everything the training loop needs to run on N processes, and nothing it needs on one:

* :func:`distributed`, the one way in and out that training, evaluation and the ablation sweep share: for the
  length of a block, this process's place in the job (:func:`init_distributed` reads torchrun's environment,
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, and joins the process group:
  NCCL on GPUs, gloo on CPUs; its CUDA device by local rank), left at the end with the deterministic-
  algorithms switch as it was. A collective that waits longer than the timeout (``XCEPTION_DIST_TIMEOUT``
  seconds, 300 by default) fails instead of hanging, so a dead worker brings the whole job down and
  ``torchrun --max-restarts`` can resume it.
* :class:`ResumableSampler` shards one global permutation per epoch across the ranks and can start
  mid-epoch at a global sample position, also under a different number of processes than the run that
  wrote the checkpoint.
* :class:`SyncBatchNorm2d` computes batch statistics over all ranks on any device (PyTorch's own
  ``nn.SyncBatchNorm`` is GPU-only); on CUDA :func:`convert_sync_batchnorm` uses PyTorch's.
* :func:`all_reduce_sum` sums exact counts across ranks, so metrics are global counts, never an average of
  per-rank averages.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import Sampler

from .errors import ConfigError, DataError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job (the training code calls it ``world``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and draws plots."""
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """Where this process computes: in a job of several processes, the CUDA device of its local rank."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain single process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def restarted_by_torchrun() -> bool:
    """True when ``torchrun --max-restarts`` relaunched the workers after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group torchrun describes (a no-op single-process env when not launched by it)."""
    if not launched_by_torchrun():
        return DistEnv()
    if torch_dist.is_initialized():
        return DistEnv(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                       torch_dist.get_backend())
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("XCEPTION_DIST_TIMEOUT", 300)))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    store = _restart_store(timeout)
    if store is None:
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    else:
        torch_dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=int(os.environ["RANK"]),
                                      world_size=int(os.environ["WORLD_SIZE"]))
    return DistEnv(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, backend)


def _restart_store(timeout: datetime.timedelta) -> torch_dist.Store | None:
    """After a ``--max-restarts`` relaunch, a view of torchrun's key-value store under a fresh prefix.

    torchrun's agent keeps serving the same store across restarts; without a new prefix the new workers
    can read the addresses the failed ones published and fail to connect. None: the default store.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return torch_dist.PrefixStore(f"xception/restart-{restart}", store)


def shutdown_distributed() -> None:
    if _initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: torch.device, dist: DistEnv | None = None) -> Iterator[DistEnv]:
    """This process's place in a data-parallel job, for the length of the block.

    ``dist`` given: the caller's job, joined and left by the caller. Otherwise the process joins the group
    torchrun describes, if any (the backend for ``device``; a CUDA process on the device of its local rank,
    see :meth:`DistEnv.local_device`), and leaves it when the block ends, however it ends: a group it did not
    join itself stays. Either way, torch's deterministic-algorithms switch is restored on the way out (a
    recipe's ``deterministic`` turns it on for its run only).
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    joined = dist is None and launched_by_torchrun() and not _initialized()
    world = dist or init_distributed(device)
    try:
        yield world
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if joined:
            shutdown_distributed()


def _initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def _in_group() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return _initialized() and torch_dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (unchanged in a single process) and return it."""
    if _in_group():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if _in_group():
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def barrier() -> None:
    if _in_group():
        torch_dist.barrier()


class ResumableSampler(Sampler[int]):
    """Shards a per-epoch permutation of ``length`` indices across ranks; resumable mid-epoch.

    Epoch e visits the permutation drawn from ``seed + e`` (or ``range(length)`` without shuffling). It
    is padded by repeating its head so that every rank gets the same number of samples (ranks must run the
    same number of steps), then dealt round-robin: rank r takes positions r, r + W, r + 2W, … After
    ``set_epoch(e, start=s)`` the first ``s`` positions of the epoch — samples already consumed by all ranks
    together — are skipped, whatever the world size that consumed them.
    """

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0) -> None:
        if length <= 0:
            raise DataError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch ``epoch``'s order and skip its first ``start`` global positions."""
        self.epoch, self.start = epoch, start

    def epoch_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.length, generator=g).tolist()

    def global_order(self) -> list[int]:
        """This epoch's positions from ``start`` on, padded to a multiple of the world size."""
        order = self.epoch_order()[self.start:]
        padded = math.ceil(len(order) / self.world_size) * self.world_size
        return order + (order * (padded // max(len(order), 1) + 1))[: padded - len(order)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return math.ceil((self.length - self.start) / self.world_size)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of all ranks' batches; the backward all-reduces its two sums too."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):  # type: ignore[override]
        channels = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        local = torch.cat([
            x.sum(dims, dtype=torch.float64),
            (x.double() ** 2).sum(dims),
            torch.tensor([x.numel() / channels], dtype=torch.float64, device=x.device),
        ])
        total = all_reduce_sum(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean**2).clamp_min(0)
        if running_mean is not None and running_var is not None:
            unbiased = var * count / (count - 1).clamp_min(1)
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        invstd = (var + eps).rsqrt().to(x.dtype).view(shape)
        x_hat = (x - mean.to(x.dtype).view(shape)) * invstd
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.count = float(count)
        return x_hat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x_hat, weight, invstd = ctx.saved_tensors
        channels = x_hat.shape[1]
        dims = [d for d in range(x_hat.dim()) if d != 1]
        shape = [1, channels] + [1] * (x_hat.dim() - 2)
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = (grad_out * x_hat).sum(dims)
        grad_weight, grad_bias = sum_dy_xhat.clone(), sum_dy.clone()  # local: DDP averages them
        total = all_reduce_sum(torch.cat([sum_dy, sum_dy_xhat]))
        mean_dy = (total[:channels] / ctx.count).view(shape)
        mean_dy_xhat = (total[channels:] / ctx.count).view(shape)
        grad_x = (grad_out - mean_dy - x_hat * mean_dy_xhat) * (weight.view(shape) * invstd)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank, on CPU (gloo) as on GPU.

    A drop-in subclass: same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; in eval mode,
    or outside a process group, it is exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _in_group()):
            return super().forward(x)
        self._check_input_dim(x)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = 0.1 if self.momentum is None else self.momentum
        track = self.track_running_stats
        weight = self.weight if self.affine else x.new_ones(self.num_features)
        bias = self.bias if self.affine else x.new_zeros(self.num_features)
        return _SyncBatchNormFunction.apply(
            x, weight, bias, self.running_mean if track else None,
            self.running_var if track else None, self.eps, momentum,
        )


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one: PyTorch's on CUDA, :class:`SyncBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
