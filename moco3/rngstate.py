"""The random-number state a checkpoint keeps: every rank's own, restored by rank.

What draws from these generators during training: drop-path and the memory bank's negative
sampling (the device's generator: the CUDA one of the rank's own GPU), and anything on the
CPU generator. The loader never does (its views are seeded per image, moco3/loader.py).

Each rank's state differs from the others' (rank r's GPU generator has been advanced by
rank r's draws), so a checkpoint written by rank 0 alone cannot hold it: `gather_rng_states`
collects every rank's (CPU, Python and its own device's generator) to rank 0, which saves
the list; on resume rank r restores entry r, its device generator on its current device.
Nothing indexes the machine's GPU list, so a resume on a node that shows fewer GPUs (one
per task under SLURM's --gpus-per-task) works.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.distributed as dist

from moco3.dist import get_rank, get_world_size


def local_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators: torch's CPU one, Python's, and `device`'s if a GPU."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device) -> dict[str, Any] | None:
    """Every rank's local_rng_state, in rank order, on rank 0 (None on the others).

    A collective: every rank of the process group must call it."""
    local = local_rng_state(device)
    world = get_world_size()
    if world == 1:
        return {"by_rank": [local]}
    gathered: list[Any] | None = [None] * world if get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return {"by_rank": gathered} if gathered is not None else None


def restore_rng_state(saved: dict[str, Any], rank: int, device: torch.device) -> str | None:
    """Restore rank `rank`'s generators from a checkpoint's `rng` entry; `device` is this
    rank's own device. Returns a sentence when something could not be restored (a rank the
    checkpoint has no state for), else None.

    Checkpoints written before states were kept per rank hold one state (rank 0's) with
    `cuda` the list of every visible GPU's generator: each rank then takes its own device's
    entry when the list has one.
    """
    if "by_rank" in saved:
        states = saved["by_rank"]
        if rank >= len(states):
            return (f"the checkpoint holds the random state of {len(states)} rank(s); rank "
                    f"{rank} starts from its seed")
        state = states[rank]
        cuda = state.get("cuda")
    else:
        state = saved
        every = saved.get("cuda") or []
        index = device.index or 0
        cuda = every[index] if device.type == "cuda" and index < len(every) else None
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    return None
