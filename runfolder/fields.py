"""The keys of status.json and summary.json, the gradient groups and the first-layer rule.

The job (moco3) writes these files and these groups; the launcher and the report read them.
Each key and group is named here once.
"""

from __future__ import annotations

from typing import Any

# status.json: written by the launcher (pending) and the job (everything after).
STATUS_KEYS = frozenset({
    "state", "step", "total_steps", "job_id", "host", "started", "updated", "error", "phase",
    "precision", "threads", "config_sha256", "num_workers", "negatives_per_query",
})
# summary.json keys that are columns of the report's runs table.
SUMMARY_KEYS = frozenset({
    "state", "step", "knn_top1", "knn_top1_max", "linear_top1", "num_knn_dips", "max_knn_dip",
    "num_spikes_first", "num_spikes_last", "diverged_step", "final_loss", "train_seconds",
    "knn_top1_pixels", "precision", "threads", "negatives_per_query",
})
# Also written by the job's summaries (pre-training and probe); known, not in the runs table.
SUMMARY_EXTRA_KEYS = frozenset({"total_steps", "spikes_by_group", "config_hash",
                                "linear_top1_last", "skipped_steps", "num_workers"})

# The parameter groups whose gradient norms the job logs (grad_norm_<group>) and watches
# for spikes, first layer to last.
GRAD_GROUPS = ("patch_embed", "first_block", "last_block", "heads")
# num_spikes_first counts the first of these that learns; num_spikes_last the last block.
FIRST_LAYER_GROUPS = ("patch_embed", "first_block")
LAST_LAYER_GROUP = "last_block"


def first_layer_group(patch_embed_trains: bool) -> str:
    """The first layer that learns: the patch projection unless it gets no gradient (a
    frozen projection), else the first block."""
    return FIRST_LAYER_GROUPS[0] if patch_embed_trains else FIRST_LAYER_GROUPS[1]


def patch_embed_trains(config: Any) -> bool:
    """Whether a run config (config.yaml, as a dict) trains its patch projection: all but a
    ViT's frozen one (a ResNet-50's stem always trains)."""
    model = config.get("model") if isinstance(config, dict) else None
    return not (isinstance(model, dict) and model.get("patch_embed") == "frozen"
                and model.get("arch") != "resnet50")
