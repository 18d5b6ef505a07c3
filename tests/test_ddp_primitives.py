"""Distributed building blocks, checked against single-process references (2 gloo processes on CPU)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from xception.distributed import ResumableSampler, SyncBatchNorm2d, all_reduce_sum, convert_sync_batchnorm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("length, world", [(10, 1), (10, 2), (11, 2), (7, 3)])
def test_sampler_deals_each_sample_once_per_epoch_padding_evenly(length, world):
    shards = [list(ResumableSampler(length, rank=r, world_size=world, seed=3)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    seen = [i for s in shards for i in s]
    assert set(seen) == set(range(length))
    assert len(seen) - length < world  # padding is less than one sample per rank


def test_sampler_reshuffles_every_epoch_and_is_reproducible():
    a = ResumableSampler(50, seed=1)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    b = ResumableSampler(50, seed=1)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_sampler_resumes_mid_epoch_under_a_different_world_size():
    order = ResumableSampler(23, seed=5).epoch_order()
    # Two ranks consumed 3 steps of 2 samples each: 12 global positions.
    done = [i for r in range(2) for i in list(ResumableSampler(23, rank=r, world_size=2, seed=5))[:6]]
    assert sorted(done) == sorted(order[:12])
    for world in (1, 3):
        rest = []
        for r in range(world):
            s = ResumableSampler(23, rank=r, world_size=world, seed=5)
            s.set_epoch(0, start=12)
            rest += list(s)
            assert len(s) == len(list(s))
        assert set(rest) == set(order[12:])  # padding repeats remaining samples, never consumed ones
        assert len(rest) == -(-11 // world) * world


def _sync_bn_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 3 + 1
    grad = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    bn = SyncBatchNorm2d(4, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2, 4))
        bn.bias.copy_(torch.linspace(-1, 1, 4))
    part = slice(rank * 3, rank * 3 + 3)
    xr = x[part].clone().requires_grad_()
    y = bn(xr)
    y.backward(grad[part])
    # DDP would average parameter gradients; sum them here to compare with the full-batch gradient.
    gw, gb = all_reduce_sum(bn.weight.grad.clone()), all_reduce_sum(bn.bias.grad.clone())
    torch.save({"y": y.detach(), "gx": xr.grad, "gw": gw, "gb": gb, "rm": bn.running_mean, "rv": bn.running_var},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_sync_batchnorm_on_two_cpu_ranks_equals_batchnorm_on_the_whole_batch(tmp_path):
    mp.spawn(_sync_bn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    x = (torch.randn(6, 4, 5, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    grad = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    bn = nn.BatchNorm2d(4, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2, 4))
        bn.bias.copy_(torch.linspace(-1, 1, 4))
    y = bn(x)
    y.backward(grad)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["gx"] for r in ranks]), x.grad)
    for r in ranks:
        torch.testing.assert_close(r["gw"], bn.weight.grad)
        torch.testing.assert_close(r["gb"], bn.bias.grad)
        torch.testing.assert_close(r["rm"], bn.running_mean)
        torch.testing.assert_close(r["rv"], bn.running_var)


def test_sync_batchnorm_is_plain_batchnorm_outside_a_process_group():
    bn = nn.BatchNorm2d(3)
    model = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), bn), torch.device("cpu"))
    assert isinstance(model[1], SyncBatchNorm2d)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                       "1.running_var", "1.num_batches_tracked"}
    x = torch.randn(4, 3, 5, 5)
    ref = nn.BatchNorm2d(3)
    torch.testing.assert_close(model[1](x), ref(x))
