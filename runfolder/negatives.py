"""How many negatives each query sees: the real K of a run, from its configuration.

The paper's labels name K at the paper's scale; a run at a smaller scale trains another
number. Every run records this number (status.json and summary.json as
`negatives_per_query`) and the report plots and compares it, with the paper's label beside
it. The report computes it from config.yaml for a run folder written before the field.
"""

from __future__ import annotations

NEGATIVES_PER_QUERY = "negatives_per_query"
# Mechanisms whose negatives are the other keys of the global batch, and those that keep
# K keys (queue) or draw K rows (memory bank) whatever the batch.
BATCH_MECHANISMS = ("in_batch", "end_to_end")
STORED_MECHANISMS = ("queue", "memory_bank")


def negatives_per_query(mechanism: str, batch_size: int, queue_size: int) -> int:
    """The keys each query's logits hold besides its positive.

    in_batch / end_to_end: the global batch holds one positive and batch_size - 1 other
    keys. queue: its K = queue_size keys. memory_bank: K = queue_size rows drawn per step.
    """
    if mechanism in BATCH_MECHANISMS:
        return batch_size - 1
    if mechanism in STORED_MECHANISMS:
        return queue_size
    valid = ", ".join(BATCH_MECHANISMS + STORED_MECHANISMS)
    raise ValueError(f"unknown negatives mechanism {mechanism!r}; valid: {valid}")


def from_config(config: object) -> int | None:
    """negatives_per_query of a resolved config.yaml mapping; None where it lacks a key."""
    try:
        moco, train = config["moco"], config["train"]  # type: ignore[index]
        return negatives_per_query(str(moco["negatives"]), int(train["batch_size"]),
                                   int(moco["queue_size"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
