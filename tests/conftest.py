"""Shared fixtures. pytest puts tests/ on sys.path, so sibling fixture modules import plainly."""

from slurm_fixture import slurm_cluster  # noqa: F401  (the real local SLURM cluster)
