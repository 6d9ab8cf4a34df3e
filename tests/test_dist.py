"""Process-group setup and the gathers; 2-process gloo runs against one process with 2B.

What "same gradient as one process" means under DDP: rank r computes L_r, the mean loss over
its own B queries; DDP then *averages* parameter gradients over the W ranks. Since the
single-process loss over W*B queries is L = (1/W) sum_r L_r, the DDP result
(1/W) sum_r dL_r/dtheta equals dL/dtheta. For in_batch this holds with keys gathered without
gradient. For end_to_end the differentiable gather's backward *sums* into rank r's keys the
gradients from every rank's loss, sum_s dL_s/dk_r, so again the mean over ranks is right.
Per tensor this reads: grad on rank r of its slice = W * (single-process grad of that slice).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from moco3.dist import (
    DistInfo,
    concat_all_gather,
    gather_with_grad,
    get_rank,
    get_world_size,
    init_distributed,
    rank_hosts,
)
from moco3.loss import infonce, infonce_with_negatives
from moco3.negatives import build_negatives

WORLD, B, D, TAU = 2, 3, 5, 0.2
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "SLURM_JOB_ID", "SLURM_NTASKS", "SUBMITIT_EXECUTOR",
               "SUBMITIT_LOCAL_NTASKS")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_setup() -> None:
    torch.set_num_threads(1)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the gloo/CPU path, also on a GPU machine
    for name in LAUNCH_VARS:
        os.environ.pop(name, None)


def _data(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / get_world_size()


def _check_gathers(rank: int) -> None:
    full = _data(0, WORLD * B, D)
    mine = full[rank * B:(rank + 1) * B].clone().requires_grad_(True)
    gathered = concat_all_gather(mine)
    assert torch.equal(gathered, full) and not gathered.requires_grad

    weights = _data(1, WORLD * B, D) * (rank + 1)  # a different loss on each rank
    (gather_with_grad(mine) * weights).sum().backward()
    # Rank r's slice receives the sum over ranks s of (s + 1) * w[slice].
    expected = _data(1, WORLD * B, D)[rank * B:(rank + 1) * B] * sum(range(1, WORLD + 1))
    torch.testing.assert_close(mine.grad, expected)


def _check_in_batch_and_end_to_end(rank: int, mechanism: str) -> None:
    sl = slice(rank * B, (rank + 1) * B)
    x1, x2 = _data(2, WORLD * B, D), _data(3, WORLD * B, D)
    theta0 = _data(4, D, D)
    neg = build_negatives(mechanism, dim=D, tau=TAU)
    grad_keys = mechanism == "end_to_end"

    def forward(theta, a, b):
        # q = z = x theta: queries, and for end_to_end also the keys (same encoder).
        q1, q2 = a @ theta, b @ theta
        k1, k2 = (q1, q2) if grad_keys else (a @ theta0, b @ theta0)
        for t in (q1, q2, k1, k2):
            if t.requires_grad:
                t.retain_grad()
        return q1, q2, k1, k2

    theta_s = theta0.clone().requires_grad_(True)
    q1, q2, k1, k2 = forward(theta_s, x1, x2)
    loss_single = infonce(q1, k2, TAU) + infonce(q2, k1, TAU)
    loss_single.backward()

    theta_r = theta0.clone().requires_grad_(True)
    r1, r2, kr1, kr2 = forward(theta_r, x1[sl], x2[sl])
    index = torch.arange(B) + rank * B
    loss_r = neg.loss(r1, kr2, index) + neg.loss(r2, kr1, index)
    loss_r.backward()

    torch.testing.assert_close(_mean_over_ranks(loss_r), loss_single.detach())
    torch.testing.assert_close(_mean_over_ranks(theta_r.grad), theta_s.grad)
    torch.testing.assert_close(r1.grad / WORLD, q1.grad[sl])
    torch.testing.assert_close(r2.grad / WORLD, q2.grad[sl])
    if grad_keys:
        # Keys here are the queries (same tensors), so their grads hold both paths.
        torch.testing.assert_close(kr1.grad / WORLD, k1.grad[sl])
    else:
        assert kr1.grad is None and kr2.grad is None


def _check_queue(rank: int) -> None:
    sl = slice(rank * B, (rank + 1) * B)
    torch.manual_seed(0)  # same initial queue on every rank, as with a common seed
    neg = build_negatives("queue", dim=D, tau=TAU, queue_size=10)
    initial = neg.queue.clone()
    k1, k2 = _data(5, WORLD * B, D).float(), _data(6, WORLD * B, D).float()
    q = _data(7, B, D).float()
    torch.testing.assert_close(neg.loss(q, k2[sl], torch.arange(B)),
                               infonce_with_negatives(q, k2[sl], initial, TAU))
    neg.update([k1[sl], k2[sl]], torch.arange(B))
    # Both ranks' keys, rank order, view order: [k1 r0, k1 r1, k2 r0, k2 r1] -> slots 0..11
    # of a 10-slot ring: slots 0..9, then the last two wrap to 0 and 1.
    stream = F.normalize(torch.cat([k1, k2]), dim=1)
    expected = initial.clone()
    for i, key in enumerate(stream):
        expected[i % 10] = key
    torch.testing.assert_close(neg.queue, expected)
    assert int(neg.queue_ptr) == 12 % 10
    assert torch.equal(concat_all_gather(neg.queue[None])[0], concat_all_gather(neg.queue[None])[1])


def _check_memory_bank(rank: int) -> None:
    torch.manual_seed(0)
    neg = build_negatives("memory_bank", dim=D, tau=TAU, queue_size=4, num_samples=10)
    before = neg.bank.clone()
    index = torch.tensor([[1, 4, 8], [7, 2, 0]])[rank]
    keys = _data(8, WORLD * B, D).float()
    neg.update([keys[rank * B:(rank + 1) * B]], index)
    all_index = torch.tensor([1, 4, 8, 7, 2, 0])
    expected = before.clone()
    expected[all_index] = F.normalize(0.5 * before[all_index] + 0.5 * F.normalize(keys, dim=1))
    torch.testing.assert_close(neg.bank, expected)
    untouched = torch.tensor([3, 5, 6, 9])
    assert torch.equal(neg.bank[untouched], before[untouched])


def _torchrun_worker(rank: int, port: int) -> None:
    _worker_setup()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    info = init_distributed()
    try:
        assert info == DistInfo(rank, WORLD, rank, torch.device("cpu"))
        assert dist.get_backend() == "gloo"
        assert (get_rank(), get_world_size()) == (rank, WORLD)
        assert init_distributed() == info  # idempotent
        assert rank_hosts() == [socket.gethostname()] * WORLD  # one host here, every rank
        _check_gathers(rank)
        _check_in_batch_and_end_to_end(rank, "in_batch")
        _check_in_batch_and_end_to_end(rank, "end_to_end")
        _check_queue(rank)
        _check_memory_bank(rank)
    finally:
        dist.destroy_process_group()


def _slurm_worker(rank: int, port: int) -> None:
    _worker_setup()
    os.environ.update(SLURM_JOB_ID="4242", SLURM_NTASKS=str(WORLD), SLURM_PROCID=str(rank),
                      SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1",
                      SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port))
    info = init_distributed()
    try:
        assert info == DistInfo(rank, WORLD, rank, torch.device("cpu"))
        assert "SUBMITIT_EXECUTOR" not in os.environ  # borrowed only for the lookup
        assert os.environ["MASTER_ADDR"] == "localhost"
        t = torch.tensor([rank + 1.0])
        dist.all_reduce(t)
        assert t.item() == sum(range(1, WORLD + 1))
    finally:
        dist.destroy_process_group()


def test_two_ranks_from_torchrun_env_match_one_process_with_2b():
    mp.spawn(_torchrun_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_two_ranks_from_slurm_env_via_submitit():
    mp.spawn(_slurm_worker, args=(_free_port(),), nprocs=WORLD, join=True)


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_gets_no_process_group(no_launcher):
    info = init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert not dist.is_initialized()
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "1")
    assert init_distributed().world_size == 1 and not dist.is_initialized()
    no_launcher.delenv("RANK")
    no_launcher.delenv("WORLD_SIZE")
    no_launcher.setenv("SLURM_JOB_ID", "7")
    no_launcher.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job: nothing to join
    assert init_distributed().world_size == 1 and not dist.is_initialized()
    assert (get_rank(), get_world_size()) == (0, 1)


def test_gathers_are_identity_without_process_group():
    assert rank_hosts() == [socket.gethostname()]
    t = torch.randn(4, 3, requires_grad=True)
    assert concat_all_gather(t) is t
    out = gather_with_grad(t)
    assert out is t
    (2 * out).sum().backward()
    torch.testing.assert_close(t.grad, torch.full((4, 3), 2.0))
