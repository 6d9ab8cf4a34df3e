"""Where the negatives come from: one interface, four mechanisms.

in_batch     MoCo v3: the other keys of the global batch (momentum encoder, no gradient).
queue        MoCo v1/v2: a FIFO ring buffer of the K most recent keys of all ranks.
memory_bank  Wu et al. 2018, as compared in MoCo v1: one stored feature per training image,
             K negatives sampled from it, rows updated with momentum.
end_to_end   MoCo v1's end-to-end baseline: keys from the same encoder with gradient, no
             momentum encoder; negatives are the rest of the global batch.

The training step calls `loss(q, k, index)` once per direction, then `update(keys, index)`
once, after the loss, so a queue or bank never holds the keys of the current step while
its logits are built. State lives in buffers so that state_dict() checkpoints it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from moco3.config import BANK_SAMPLINGS, MECHANISMS
from moco3.dist import concat_all_gather, gather_with_grad, get_rank
from moco3.loss import infonce, infonce_with_negatives


class Negatives(nn.Module, ABC):
    """Contrastive loss of one direction plus the state its negatives come from."""

    # Whether the keys come from a momentum encoder (False: the training step takes the
    # keys from the base encoder).
    needs_momentum_encoder: bool = True

    def __init__(self, tau: float, scale_by_2tau: bool = True) -> None:
        super().__init__()
        self.tau = tau
        self.scale_by_2tau = scale_by_2tau

    @abstractmethod
    def loss(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """q: (N, D) local queries; k: (N, D) their positive keys; index: (N,) dataset
        indices of the images. Returns the scalar loss of this direction."""

    def update(self, keys: list[torch.Tensor], index: torch.Tensor) -> None:
        """Fold this step's keys [(N, D), ...] into the state, after the loss. No-op here."""


class InBatchNegatives(Negatives):
    """MoCo v3: logits against the keys of all ranks, labels offset by rank."""

    def loss(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        k_all = concat_all_gather(k.detach())
        return infonce(q, k_all, self.tau, offset=q.shape[0] * get_rank(),
                       scale_by_2tau=self.scale_by_2tau)


class EndToEndNegatives(Negatives):
    """MoCo v1's end-to-end: like in_batch, but the keys are the base encoder's and carry
    gradient through the gather, so the dictionary is capped by the global batch."""

    needs_momentum_encoder = False

    def loss(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Choice: the gradient flows into the keys of every rank (differentiable gather),
        # as one big-batch process would have it; MoCo v1 does not say how its 8-GPU
        # end-to-end run treated the other GPUs' keys.
        k_all = gather_with_grad(k)
        return infonce(q, k_all, self.tau, offset=q.shape[0] * get_rank(),
                       scale_by_2tau=self.scale_by_2tau)


class QueueNegatives(Negatives):
    """MoCo v1/v2: K L2-normalised keys in a FIFO ring buffer shared by all ranks."""

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, dim: int, tau: float, scale_by_2tau: bool, queue_size: int) -> None:
        super().__init__(tau, scale_by_2tau)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        # As the official MoCo v1/v2 code: the queue starts as random unit vectors, used as
        # negatives until real keys have replaced them.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.queue.shape[0]

    def loss(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return infonce_with_negatives(q, k.detach(), self.queue, self.tau,
                                      scale_by_2tau=self.scale_by_2tau)

    @torch.no_grad()
    def update(self, keys: list[torch.Tensor], index: torch.Tensor) -> None:
        """Enqueue the keys of all ranks (rank order, then list order), oldest first out.

        Choice: with the symmetric loss both views' keys are enqueued ([k1 of all ranks,
        k2 of all ranks]), so the queue turns over twice as fast as MoCo v1/v2's
        one-directional loss, which enqueues one key per image; pass [k2] to match them.
        Any K works: writes wrap around the end of the buffer, and a step with more keys
        than K keeps only the newest K.
        """
        new = torch.cat([concat_all_gather(k.detach()) for k in keys], dim=0)
        new = F.normalize(new.float(), dim=1).to(self.queue.dtype)
        n, size = new.shape[0], self.queue_size
        kept = min(n, size)
        positions = (self.queue_ptr + (n - kept)
                     + torch.arange(kept, device=self.queue.device)) % size
        self.queue.index_copy_(0, positions, new[n - kept:])
        self.queue_ptr.copy_((self.queue_ptr + n) % size)


class MemoryBankNegatives(Negatives):
    """Wu et al. 2018 as compared in MoCo v1: a bank of one unit feature per image.

    The positive of q[i] is bank[index[i]]; K negatives are drawn uniformly from the bank
    with the global torch RNG. There is no momentum encoder: the momentum acts on the bank
    rows, bank[i] <- normalize(m * bank[i] + (1 - m) * k_i), in update(). The `k` given to
    loss() is not used (the positive comes from the bank); update() takes the base
    encoder's keys of the batch.

    sampling "distinct" (default): K different rows, none of them a row of this batch's
    images, so every query sees K distinct negatives and never its own positive.
    Divergence (a small-N correction): Wu et al.'s code draws with replacement and never
    excludes the positive ("with_replacement" restores it). At 1.28M images that hardly
    matters; with K = 2048 drawn from 2,000 rows, 64 % of queries would meet their own
    positive among their negatives and a third of the draws would be repeats.
    """

    needs_momentum_encoder = False
    bank: torch.Tensor

    def __init__(self, dim: int, tau: float, scale_by_2tau: bool, num_negatives: int,
                 num_samples: int, bank_momentum: float,
                 sampling: str = "distinct") -> None:
        super().__init__(tau, scale_by_2tau)
        if num_samples < 1:
            raise ValueError("memory_bank needs num_samples = the size of the training set "
                             f"(one row per image), got {num_samples}")
        if num_negatives < 1:
            raise ValueError(f"memory_bank needs queue_size (K) >= 1, got {num_negatives}")
        if not 0.0 <= bank_momentum <= 1.0:
            raise ValueError(f"bank_momentum must be in [0, 1], got {bank_momentum}")
        if sampling not in BANK_SAMPLINGS:
            raise ValueError(f"unknown memory-bank sampling {sampling!r}; valid: "
                             f"{', '.join(BANK_SAMPLINGS)}")
        self.num_negatives = num_negatives
        self.bank_momentum = bank_momentum
        self.sampling = sampling
        # Choice: rows start as random unit vectors (Wu et al. start from small uniform
        # noise, not normalised); every row is unit-norm from the first step on.
        self.register_buffer("bank", F.normalize(torch.randn(num_samples, dim), dim=1))

    def loss(self, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Choice: one set of K negatives per call, shared by the mini-batch ("the dictionary
        # for each mini-batch is randomly sampled from the memory bank", MoCo v1); Wu et al.
        # draw K per sample, which costs N*K*D memory.
        sampled = self.sample(index.to(self.bank.device))
        return infonce_with_negatives(q, self.bank[index], self.bank[sampled], self.tau,
                                      scale_by_2tau=self.scale_by_2tau)

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(K,) bank rows to use as negatives for the queries of images `index` (N,)."""
        rows, k = self.bank.shape[0], self.num_negatives
        if self.sampling == "with_replacement":
            return torch.randint(rows, (k,), device=self.bank.device)
        # A shared set cannot hold a query's own row, so it holds no row of the batch: with
        # one set per step this is the only way no query meets its positive.
        own = torch.zeros(rows, dtype=torch.bool, device=self.bank.device)
        own[index] = True
        if k > rows - int(own.sum()):
            raise ValueError(
                f"memory_bank cannot draw K={k} distinct negatives from the "
                f"{rows - int(own.sum())} rows outside the batch; lower K (moco.queue_size) "
                "or set moco.bank_sampling=with_replacement")
        order = torch.randperm(rows, device=self.bank.device)
        return order[~own[order]][:k]

    @torch.no_grad()
    def update(self, keys: list[torch.Tensor], index: torch.Tensor) -> None:
        """Momentum-update the rows of the images of all ranks; other rows stay untouched.

        Choice: with two views the bank takes one step towards the normalised mean of the
        views' keys (Wu et al. have one view per image), so the order of views is moot.
        Indices within one step are expected to be distinct (a sampler's epoch never
        repeats an image); a repeated index keeps one of its updates.
        """
        index_all = concat_all_gather(index.to(self.bank.device))
        k_all = torch.stack([F.normalize(concat_all_gather(k.detach()).float(), dim=1)
                             for k in keys]).mean(dim=0)
        m = self.bank_momentum
        rows = F.normalize(m * self.bank[index_all].float() + (1.0 - m) * k_all, dim=1)
        self.bank.index_copy_(0, index_all, rows.to(self.bank.dtype))


def build_negatives(
    mechanism: str,
    dim: int,
    tau: float,
    scale_by_2tau: bool = True,
    queue_size: int = 65536,
    num_samples: int = 0,
    bank_momentum: float = 0.5,
    bank_sampling: str = "distinct",
) -> Negatives:
    """One of MECHANISMS. queue_size is K, the number of negatives, for queue and
    memory_bank; num_samples is the training-set size and bank_sampling one of
    BANK_SAMPLINGS (memory_bank only)."""
    if mechanism == "in_batch":
        return InBatchNegatives(tau, scale_by_2tau)
    if mechanism == "end_to_end":
        return EndToEndNegatives(tau, scale_by_2tau)
    if mechanism == "queue":
        return QueueNegatives(dim, tau, scale_by_2tau, queue_size)
    if mechanism == "memory_bank":
        return MemoryBankNegatives(dim, tau, scale_by_2tau, queue_size, num_samples,
                                   bank_momentum, bank_sampling)
    raise ValueError(f"unknown negatives mechanism {mechanism!r}; valid: {', '.join(MECHANISMS)}")


_CLASSES: dict[str, type[Negatives]] = {
    "in_batch": InBatchNegatives, "end_to_end": EndToEndNegatives,
    "queue": QueueNegatives, "memory_bank": MemoryBankNegatives,
}


def needs_momentum_encoder(mechanism: str) -> bool:
    """Whether the keys of `mechanism` come from a momentum encoder (the model builds one
    only then); its class says so."""
    if mechanism not in _CLASSES:
        raise ValueError(f"unknown negatives mechanism {mechanism!r}; "
                         f"valid: {', '.join(MECHANISMS)}")
    return _CLASSES[mechanism].needs_momentum_encoder
