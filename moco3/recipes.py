"""The official recipes whose values depend on how long a run trains.

The official ResNet-50 settings (moco-v3 CONFIG.md and main_moco.py's defaults) differ by
pre-training length: 100 epochs take lr 0.6, 300 epochs lr 0.3, 1000 epochs also a larger
weight decay and a slower momentum encoder. `model=resnet50` picks them through the
`r50_recipe` config resolver from the run's own train.epochs, so every study runs the
official setting for its length; a length between two official ones takes the nearest (in
ratio: 200 epochs take the 300-epoch setting).
"""

from __future__ import annotations

import math

# epochs -> LARS base lr (per 256 images), weight decay, m0 (cosine schedule to 1).
R50_RECIPES: dict[int, dict[str, float]] = {
    100: {"base_lr": 0.6, "weight_decay": 1.0e-6, "m0": 0.99},
    300: {"base_lr": 0.3, "weight_decay": 1.0e-6, "m0": 0.99},
    1000: {"base_lr": 0.3, "weight_decay": 1.5e-6, "m0": 0.996},
}


def r50_setting(epochs: int) -> int:
    """The official R50 epoch setting nearest to `epochs` (by ratio)."""
    return min(R50_RECIPES, key=lambda e: (abs(math.log(max(1, int(epochs)) / e)), e))


R50_WARMUP_EPOCHS = 10  # main_moco.py's default, the same at every official length


def r50_recipe(key: str, epochs: int) -> float:
    """The official R50 value of `key` (base_lr | weight_decay | m0 | warmup_epochs) for
    `epochs`."""
    if key == "warmup_epochs":
        # Divergence: a run shorter than 100 epochs warms up for a tenth of its length (the
        # official ratio at 100 epochs) rather than 10 epochs, which would be all of a
        # 10-epoch run.
        return float(min(R50_WARMUP_EPOCHS, int(epochs) / 10))
    return R50_RECIPES[r50_setting(epochs)][key]
