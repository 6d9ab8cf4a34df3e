"""The pre-training job: exact resume, preemption, refusal, divergence, monitors, DDP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from moco3 import checkpoint as ckpt
from moco3.config import ConfigError, to_run_config
from moco3.monitor import group_grad_norms
from moco3.train import Trainer, train

TIMING = {"sec_per_step", "img_per_sec", "peak_mem_mb"}


def tiny(**over) -> dict:
    """A run that takes seconds: 256 images, batch 32 -> 8 steps per epoch."""
    cfg = {
        "seed": 0,
        "model": {"arch": "vit_tiny", "img_size": 16, "patch_size": 4, "depth": 2,
                  "embed_dim": 48, "num_heads": 3, "mlp_dim": 96, "dim": 32,
                  "patch_embed": "learned"},
        "moco": {"negatives": "in_batch"},
        "data": {"name": "synthetic", "num_train": 256, "num_val": 64},
        "optim": {"base_lr": 1.5e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 32, "precision": "fp32", "log_every": 2,
                  "knn_every": 4, "knn_memory": 256, "knn_queries": 64,
                  "ckpt_every_steps": 1000, "milestones": [1]},
        "probe": {"enabled": True, "epochs": 2, "batch_size": 64, "augment": False},
    }
    for dotted, value in over.items():
        node = cfg
        *path, leaf = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


def rows(run_dir: Path) -> dict[tuple, dict]:
    """Metrics rows deduplicated as readers do, minus timings and resume bookkeeping."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") in ("resumed", "preempted"):
            continue
        key = (row["kind"], row["step"], row.get("event"), row.get("group"))
        out[key] = {k: v for k, v in row.items() if k not in TIMING}
    return out


def lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl line by line, as written, minus timings and the interruption events:
    what must be identical between a resumed and an uninterrupted run."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") not in ("resumed", "preempted"):
            out.append({k: v for k, v in row.items() if k not in TIMING})
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load(ckpt.last_path(run_dir))
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"neg.{k}": v for k, v in state["negatives"].items()}}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref")
    assert train(tiny(), run) == "done"
    return run


def test_run_folder_contract(reference: Path) -> None:
    status = json.loads((reference / "status.json").read_text())
    assert status["state"] == "running" and status["phase"] == "probe"  # probe still to run
    assert status["step"] == status["total_steps"] == 16
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["state"] == "done" and summary["step"] == 16
    assert 0 <= summary["knn_top1"] <= 100
    # The real K: the other 31 keys of the batch of 32, in both records.
    assert summary["negatives_per_query"] == status["negatives_per_query"] == 31
    kinds = [json.loads(x)["kind"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("train") == 8 and kinds.count("knn") == 5  # at init and every 4 steps
    train_row = next(r for r in rows(reference).values() if r["kind"] == "train")
    for key in ("loss", "lr", "wd", "momentum", "tau", "grad_norm", "grad_norm_patch_embed",
                "grad_norm_first_block", "grad_norm_last_block", "grad_norm_heads", "epoch",
                "images_seen"):
        assert key in train_row, key
    assert not (reference / "config.yaml").exists()  # the launcher's to write, not the job's
    assert ckpt.milestone_path(reference, 1).exists()


@pytest.mark.parametrize("stops", [[3], [8], [5, 11]], ids=["warmup", "epoch-boundary",
                                                             "mid-epoch-twice"])
def test_resume_is_bitwise_exact(reference: Path, tmp_path: Path, stops: list[int]) -> None:
    for stop in stops:
        assert train(tiny(), tmp_path, stop_at_step=stop) == "preempted"
        assert json.loads((tmp_path / "status.json").read_text())["state"] == "preempted"
    assert train(tiny(), tmp_path) == "done"
    assert_bitwise_equal(weights(reference), weights(tmp_path))
    assert lines(reference) == lines(tmp_path)  # every row exactly once, in order


def test_signal_checkpoints_and_marks_preempted(tmp_path: Path) -> None:
    def on_row(row: dict) -> None:
        if row["kind"] == "train" and row["step"] == 4:
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.getsignal(signal.SIGUSR1)
    assert train(tiny(), tmp_path, on_row=on_row) == "preempted"
    assert signal.getsignal(signal.SIGUSR1) == previous  # handlers restored
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "preempted"
    # The signal came while step 4 was logged: the next step boundary is right after it.
    assert ckpt.load(ckpt.last_path(tmp_path))["step"] == 4


def test_changed_config_is_refused(tmp_path: Path) -> None:
    train(tiny(), tmp_path, stop_at_step=2)
    with pytest.raises(ConfigError, match="different configuration"):
        train(tiny(**{"moco.tau": 0.5}), tmp_path)


def test_corrupt_last_falls_back_to_milestone(reference: Path, tmp_path: Path, capsys) -> None:
    train(tiny(), tmp_path, stop_at_step=12)
    ckpt.last_path(tmp_path).write_bytes(b"not a checkpoint")
    assert train(tiny(), tmp_path) == "done"
    assert "unreadable" in capsys.readouterr().out
    # Resumed from the epoch-1 milestone (step 8), the run still ends bit-identical.
    assert_bitwise_equal(weights(reference), weights(tmp_path))


def test_a_memory_bank_run_records_its_k_and_trains_with_either_sampling(tmp_path: Path
                                                                         ) -> None:
    for sampling in ("distinct", "with_replacement"):
        run = tmp_path / sampling
        cfg = tiny(**{"moco.negatives": "memory_bank", "moco.queue_size": 64,
                      "moco.bank_sampling": sampling, "train.epochs": 1, "train.knn_every": 0,
                      "probe.enabled": False})
        assert train(cfg, run) == "done"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["negatives_per_query"] == 64 and summary["step"] == 8


def test_non_finite_loss_is_a_result(tmp_path: Path, monkeypatch) -> None:
    import moco3.step as step_module

    real = step_module.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(step_module, "compute_loss", poisoned)
    assert train(tiny(), tmp_path) == "diverged"
    status = json.loads((tmp_path / "status.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert status["state"] == "diverged" and summary["diverged_step"] == 6
    assert summary["state"] == "diverged"
    kept = rows(tmp_path)
    assert ("train", 4, None, None) in kept and ("event", 6, "diverged", None) in kept


def test_group_grad_norms_match_torch(tmp_path: Path) -> None:
    trainer = Trainer(to_run_config(tiny()), tmp_path)
    from moco3.loader import StepBatchSampler, epoch_loader

    sampler = StepBatchSampler(len(trainer.train_set), 32, 0, 0, 0, 1)
    views, _, index = next(iter(epoch_loader(trainer.images, trainer.two_views, sampler, 0, 0,
                                             0, False)))
    trainer.train_step(views[0], views[1], index, m=0.99)
    norms = group_grad_norms(trainer.groups).tolist()
    for value, params in zip(norms, trainer.groups.values(), strict=False):
        grads = [p.grad for p in params if p.grad is not None]
        assert value == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-5)
    everything = {id(p): p.grad for ps in trainer.groups.values() for p in ps if p.grad is not None}
    total = torch.nn.utils.get_total_norm(list(everything.values())).item()
    assert norms[-1] == pytest.approx(total, rel=1e-5)


# LARS rather than AdamW: some parameters have a true gradient of exactly zero (the key
# bias of attention, a LayerNorm bias in front of BN) and Adam rescales their float noise
# to lr-sized steps, which differ between any two summation orders. LARS leaves noise noise.
DDP_RUN = {"train.epochs": 1, "train.knn_every": 0, "probe.enabled": False,
           "optim.name": "lars", "optim.base_lr": 0.3, "optim.weight_decay": 1.0e-6}


def _ddp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(tiny(**DDP_RUN), run_dir)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    single = tmp_path / "single"
    train(tiny(**DDP_RUN), single)
    a, b = weights(single), weights(tmp_path / "ddp")
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-5,
                                   msg=key)
    la = [r["loss"] for r in rows(single).values() if r["kind"] == "train"]
    lb = [r["loss"] for r in rows(tmp_path / "ddp").values() if r["kind"] == "train"]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


def test_probe_resumes_exactly_and_reports_the_best_epoch(reference: Path, tmp_path: Path
                                                           ) -> None:
    import shutil

    from moco3.probe import probe

    for name in ("first", "second"):
        shutil.copytree(reference, tmp_path / name)
    full = probe(tiny(), tmp_path / "first")
    assert probe(tiny(), tmp_path / "second", stop_at_epoch=1) <= full
    assert json.loads((tmp_path / "second" / "status.json").read_text())["state"] == "preempted"
    assert probe(tiny(), tmp_path / "second") == full
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    probe_rows = [r for r in rows(tmp_path / "second").values() if r["kind"] == "probe"]
    assert [r["probe_epoch"] for r in probe_rows] == [1, 2]
    assert summary["linear_top1"] == max(r["probe_top1"] for r in probe_rows) == full
    assert rows(tmp_path / "first") == rows(tmp_path / "second")
    status = json.loads((tmp_path / "second" / "status.json").read_text())
    assert status["state"] == "done"


def test_loader_workers_do_not_change_the_run(tmp_path: Path) -> None:
    """Augmentation is seeded per image, so worker processes see the same views."""
    one = {"train.epochs": 1, "train.knn_every": 0, "probe.enabled": False}
    train(tiny(**one), tmp_path / "main")
    train(tiny(**one, **{"data.num_workers": 2}), tmp_path / "workers")
    assert_bitwise_equal(weights(tmp_path / "main"), weights(tmp_path / "workers"))
