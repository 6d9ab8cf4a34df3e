"""train.precision: auto, per hardware; each branch forced, whatever CPU this runs on."""

from __future__ import annotations

import pytest
import torch

import moco3.precision as P
from moco3.config import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("fast_bf16,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_where_the_cpu_multiplies_it_natively(
        monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert P.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("bf16_supported,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_takes_bf16_else_fp16(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert P.resolve_precision("auto", CUDA) == expected


def test_explicit_precisions_are_kept_and_fp16_needs_cuda():
    for precision in ("fp32", "bf16"):
        assert P.resolve_precision(precision, CPU) == precision
    assert P.resolve_precision("fp16", CUDA) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        P.resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="not valid"):
        P.resolve_precision("fp8", CPU)
    assert P.autocast_dtype("fp32") is None and P.autocast_dtype("bf16") is torch.bfloat16


def test_the_cpu_flags_decide_and_the_kind_is_named(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert P.cpu_has_fast_bf16() and P.cpu_kind() == "AVX512_BF16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not P.cpu_has_fast_bf16()
    assert P.cpu_kind() == torch.backends.cpu.get_cpu_capability()


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch):
    """Requeued onto a node of another kind, a run does not switch precision mid-run."""
    from test_train import tiny

    from moco3 import checkpoint as ckpt
    from moco3.train import train

    cfg = tiny(**{"train.precision": "auto", "model.depth": 1, "train.knn_every": 0,
                  "probe.enabled": False})
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)  # the first node: bf16
    assert train(cfg, tmp_path, stop_at_step=2) == "preempted"
    assert ckpt.load(ckpt.last_path(tmp_path))["precision"] == "bf16"
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)  # the next: fp32 if new
    assert train(cfg, tmp_path, stop_at_step=3) == "preempted"
    assert ckpt.load(ckpt.last_path(tmp_path))["precision"] == "bf16"
    status = (tmp_path / "status.json").read_text()
    assert '"precision": "bf16"' in status
