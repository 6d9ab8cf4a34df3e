"""The Hydra config tree (a package, so that an installed moco3-launch finds it)."""
