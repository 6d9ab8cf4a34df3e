"""The CUDA paths, checked on a CPU: what a first GPU run depends on, with the GPU faked where
the rule itself is what matters (precision, generators, worker counts, device names)."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
from pathlib import Path

import pytest
import test_train
import torch
import torch.multiprocessing as mp

from benchmarks.gpu_check import correctness, distributed, harness, profiles, speed
from benchmarks.gpu_check import report as reporting
from benchmarks.train_step import peak_tflops
from moco3 import checkpoint as ckpt
from moco3 import dist as moco_dist
from moco3.config import config_hash, to_run_config
from moco3.model import build_model
from moco3.precision import resolve_precision
from moco3.rngstate import gather_rng_states, local_rng_state, restore_rng_state
from moco3.schedules import scaled_lr
from moco3.train import Trainer, train
from moco3.workers import resolve_num_workers

CUDA = torch.device("cuda", 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny(**over) -> dict:
    """test_train's run of seconds, one epoch of 8 steps, no kNN, no probe, with drop-path
    (so the CUDA generator's stream matters)."""
    return test_train.tiny(**{"model.drop_path_rate": 0.1, "train.epochs": 1,
                              "train.knn_every": 0, "probe.enabled": False, **over})


# -- 1. the GPU check's AdamW update bound ----------------------------------------------------
def test_weight_decay_rounding_fits_the_update_bound() -> None:
    """CPU and CUDA fused AdamW round the decoupled weight decay differently; emulated on the
    CUDA check's model (ViT-S/16, heads 4096/256) at its lr, that alone exceeds the old bound
    of 1e-4 and stays well inside the check's bound."""
    torch.manual_seed(0)
    model = build_model("vit_small", dim=256, mlp_dim=4096, img_size=224, patch_size=16,
                        patch_embed="learned")
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scaled_lr(profiles.BASE_LR, profiles.CUDA_PROFILE.check_batch)
    rel = correctness.decay_rounding_rel(params, lr, profiles.WEIGHT_DECAY, stride=64)
    assert 1e-4 < rel < profiles.UPDATE_REL / 2, rel
    # The emulated CPU form is torch's CPU fused kernel's: its result differs from it by
    # the update's own rounding only, the CUDA form by the decay's too.
    p = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 0.05
    p.grad = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    before = p.detach().clone()
    torch.optim.AdamW([p], lr=lr, weight_decay=profiles.WEIGHT_DECAY, fused=True).step()
    update = lr * torch.sign(p.grad)  # Adam's first step: m / sqrt(v) = sign(g)
    as_cpu = before * torch.tensor(1 - lr * profiles.WEIGHT_DECAY) - update
    as_cuda = (before - (lr * profiles.WEIGHT_DECAY) * before) - update
    assert (p.detach() - as_cpu).abs().max() < (p.detach() - as_cuda).abs().max()


# -- 2. --device auto and a GPU torch cannot use ------------------------------------------------
def test_auto_refuses_the_cpu_when_an_nvidia_device_is_unusable(monkeypatch, capsys,
                                                               tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "nvidia_device_nodes", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(harness, "nvidia_driver_version", lambda: "470.256.02")
    monkeypatch.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError(
        "The NVIDIA driver on your system is too old (found version 11040).")))
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--device", "auto", "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "/dev/nvidia0" in err and "too old" in err and "470.256.02" in err
    assert "--device cpu" in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing to mistake for a result


# -- 3. per-rank random states --------------------------------------------------------------
def _rng_worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      CUDA_VISIBLE_DEVICES="")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    cpu = torch.device("cpu")
    try:
        # The mechanism, with states that differ per rank (as each GPU's generator does).
        torch.manual_seed(100 + rank)
        random.seed(100 + rank)
        torch.rand(3 + rank)
        mine = local_rng_state(cpu)
        saved = gather_rng_states(cpu)
        if rank == 0:
            assert saved is not None and len(saved["by_rank"]) == world
            assert not torch.equal(saved["by_rank"][0]["torch"], saved["by_rank"][1]["torch"])
            torch.save(saved, Path(folder) / "rng.pt")
        else:
            assert saved is None
        torch.distributed.barrier()
        torch.manual_seed(12345)
        random.seed(12345)
        loaded = torch.load(Path(folder) / "rng.pt", weights_only=True)
        assert restore_rng_state(loaded, rank, cpu) is None
        assert torch.equal(torch.get_rng_state(), mine["torch"])
        assert random.getstate() == tuple(mine["python"])

        # The job: a checkpoint of a two-process run holds both ranks' states, and a
        # resumed Trainer restores rank r's own.
        run_dir = Path(folder) / "run"
        assert train(tiny(), run_dir, stop_at_step=3, log=lambda _: None) == "preempted"
        at_save = local_rng_state(cpu)
        torch.distributed.barrier()
        state = ckpt.load(ckpt.last_path(run_dir))
        assert len(state["rng"]["by_rank"]) == world
        assert torch.equal(state["rng"]["by_rank"][rank]["torch"], at_save["torch"])
        trainer = Trainer(to_run_config(tiny()), run_dir, log=lambda _: None)
        torch.manual_seed(999)
        assert trainer.resume()
        assert torch.equal(torch.get_rng_state(), at_save["torch"])
        trainer.runlog.close()
    finally:
        torch.distributed.destroy_process_group()


def test_random_states_are_saved_and_restored_per_rank(tmp_path: Path) -> None:
    mp.spawn(_rng_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)


def test_cuda_generators_restore_on_the_rank_own_device(monkeypatch) -> None:
    """No list of every visible GPU: rank r's state goes to its current device, so a node
    that shows fewer GPUs than the one that saved restores without an index error."""
    calls: list[tuple[str, object]] = []
    def get_rng_state(device: torch.device) -> torch.Tensor:
        calls.append(("get", device))
        return torch.zeros(8, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append(("set", device, int(state[0]))))
    state = local_rng_state(CUDA)
    assert ("get", CUDA) in calls and "cuda" in state
    by_rank = [dict(local_rng_state(torch.device("cpu")), cuda=torch.full((8,), r,
                                                                         dtype=torch.uint8))
               for r in range(4)]
    calls.clear()
    assert restore_rng_state({"by_rank": by_rank}, 3, CUDA) is None
    assert calls == [("set", CUDA, 3)]
    # A checkpoint of the earlier format: rank 0's view of 8 GPUs, read on a node with one.
    legacy = dict(local_rng_state(torch.device("cpu")),
                  cuda=[torch.full((8,), i, dtype=torch.uint8) for i in range(8)])
    calls.clear()
    assert restore_rng_state(legacy, 0, CUDA) is None
    assert calls == [("set", CUDA, 0)]
    # More ranks than the checkpoint saved: said, not an index error.
    assert "2 rank(s)" in restore_rng_state({"by_rank": by_rank[:2]}, 3, CUDA)


# -- 4. precision auto on a card with emulated bf16 -------------------------------------------
@pytest.mark.parametrize(("native", "expected"), [(False, "fp16"), (True, "bf16")])
def test_auto_precision_ignores_emulated_bf16(monkeypatch, native: bool, expected: str) -> None:
    # A T4-class card: bf16 "supported" only when emulation counts (torch's default).
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", CUDA) == expected


def test_auto_precision_with_an_older_torch(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # no keyword
    assert resolve_precision("auto", CUDA) == "fp16"


# -- 5. loader workers of a GPU run ---------------------------------------------------------
def test_gpu_runs_get_workers_from_their_cores(monkeypatch) -> None:
    for name in ("MOCO3_CPUS_PER_GPU", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert resolve_num_workers(None, CUDA) == 31  # one GPU process owns the machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 GPUs on this node
    assert resolve_num_workers(None, CUDA) == 7
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")  # SLURM: one task per GPU
    assert resolve_num_workers(None, CUDA) == 9
    monkeypatch.setenv("MOCO3_CPUS_PER_GPU", "1")  # the local launcher's share
    assert resolve_num_workers(None, CUDA) == 1  # at least one
    assert resolve_num_workers(None, torch.device("cpu")) == 0  # cores go to threads
    assert resolve_num_workers(3, CUDA) == resolve_num_workers(3, torch.device("cpu")) == 3


def test_local_pool_gives_a_gpu_run_its_share_of_cores(monkeypatch, tmp_path: Path) -> None:
    from moco3.experiments import local_pool

    seen = {}

    class Popen:
        def __init__(self, cmd, cwd, env, stdout, stderr) -> None:
            seen.update(env)

    monkeypatch.setattr(local_pool.subprocess, "Popen", Popen)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    pool = local_pool.Pool([], parallel=4, gpu_ids=[0, 1, 2, 3])
    pool._start({"run_id": "r", "run_dir": str(tmp_path / "r"), "gpus": 1})
    pool.active[0].log.close()
    assert seen["MOCO3_CPUS_PER_GPU"] == "4" and seen["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_run_records_its_worker_count(tmp_path: Path) -> None:
    assert train(tiny(**{"data.num_workers": 1}), tmp_path / "run", log=lambda _: None) == "done"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert summary["num_workers"] == status["num_workers"] == 1


def test_the_worker_count_is_not_part_of_the_config_hash() -> None:
    assert (config_hash(to_run_config(tiny())) ==
            config_hash(to_run_config(tiny(**{"data.num_workers": 4}))))


# -- 8. fp16 steps the GradScaler skipped ----------------------------------------------------
def test_steps_the_scaler_skipped_are_not_spikes(tmp_path: Path) -> None:
    trainer = Trainer(to_run_config(tiny()), tmp_path / "run", log=lambda _: None)
    trainer.scaler = torch.amp.GradScaler("cpu")  # as an fp16 run has one
    norms = [[1.0, 1.0, 1.0, 1.0, 2.0]] * 8 + [[math.inf, 1.0, 1.0, math.nan, math.inf]]
    norms += [[1.0, 1.0, 1.0, 1.0, 2.0]]
    trainer.pending = [(s + 1, torch.tensor(1.0), torch.tensor(n)) for s, n in
                       enumerate(norms)]
    assert trainer.flush(None) is None
    events = [json.loads(line) for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("skipped_step", 9)]
    assert trainer.monitor.spikes == {} and trainer.monitor.skipped_steps == 1
    assert trainer.summary("done")["skipped_steps"] == 1
    # Without a scaler (fp32, bf16) a non-finite norm stays what it was: a spike.
    trainer.scaler = None
    trainer.pending = [(11, torch.tensor(1.0), torch.tensor(norms[8]))]
    trainer.flush(None)
    assert trainer.monitor.spikes == {"patch_embed": 1, "heads": 1}
    trainer.runlog.close()


# -- 7. timeouts ------------------------------------------------------------------------------
def test_the_process_group_gets_an_explicit_timeout(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(moco_dist.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(moco_dist.dist, "is_initialized", lambda: False)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MOCO3_DIST_TIMEOUT_S", raising=False)
    moco_dist.init_distributed()
    assert seen["timeout"].total_seconds() == moco_dist.DIST_TIMEOUT_S
    monkeypatch.setenv("MOCO3_DIST_TIMEOUT_S", "90")
    assert moco_dist.dist_timeout().total_seconds() == 90
    monkeypatch.setenv("MOCO3_DIST_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="MOCO3_DIST_TIMEOUT_S"):
        moco_dist.dist_timeout()


def test_hung_ranks_are_killed_before_the_section_ends(monkeypatch) -> None:
    def hang(*args) -> None:  # a rank blocked in a collective that never completes
        time.sleep(600)

    monkeypatch.setattr(distributed, "_rank_main", hang)  # forked children see it
    ctx = profiles.Context(torch.device("cpu"), profiles.CPU_PROFILE, math.inf, verbose=False)
    ctx.section_deadline = time.perf_counter() + 10
    model = correctness.check_model(ctx)
    x1, x2 = correctness.check_batch(ctx)
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="did not finish"):
        distributed.run_two_ranks(ctx, "gloo", [torch.device("cpu")] * 2, model, x1, x2, 1)
    assert time.perf_counter() - start < 10


# -- 6. two real ranks in the check -----------------------------------------------------------
def test_the_two_rank_check_passes_and_catches_a_wrong_label_offset(monkeypatch) -> None:
    ctx = profiles.Context(torch.device("cpu"), profiles.CPU_PROFILE, math.inf, verbose=False)
    x1, x2 = correctness.check_batch(ctx)
    plain = correctness.check_model(ctx)
    groups = correctness.param_groups_by_name(plain)
    report = reporting.Report("cpu-reduced", "cpu")
    ctx.section_deadline = time.perf_counter() + 120
    distributed.two_rank_checks(ctx, report, x1, x2, plain, groups)
    rows = {c.name: c for c in report.checks}
    two = rows["gloo, 2 ranks on the CPU, DDP + GlobalBatchNorm1d vs 1 process"]
    assert two.status == "pass" and "replicas identical" in two.measured, two
    assert rows["nccl, 2 ranks on 2 GPUs, DDP + GlobalBatchNorm1d vs 1 process"].status \
        .startswith(profiles.NO_CUDA)
    # Every rank labelling its queries as if it were rank 0 (the forked ranks inherit this).
    import moco3.negatives

    monkeypatch.setattr(moco3.negatives, "get_rank", lambda: 0)
    report = reporting.Report("cpu-reduced", "cpu")
    distributed.two_rank_checks(ctx, report, x1, x2, plain, groups)
    assert report.checks[0].status == "fail", report.checks[0]


# -- 9. MFU, the compiled step, the JSON --------------------------------------------------------
def test_peak_table_matches_names_exactly() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.5  # a substring match gave it 989
    assert peak_tflops("NVIDIA H100 NVL") == 835.5
    assert peak_tflops("NVIDIA L40S") == 362.1 and peak_tflops("NVIDIA L40") == 181.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("Tesla T4") == 65.0
    assert peak_tflops("NVIDIA A10G") is None  # not the A10: unknown, so no MFU at all
    assert peak_tflops("NVIDIA GeForce RTX 4090") is None


def test_compiled_step_is_compared_with_the_eager_one() -> None:
    ctx = profiles.Context(torch.device("cpu"), profiles.CPU_PROFILE, math.inf, verbose=False)
    same = speed.compiled_vs_eager(ctx, "vit_small", 2, compile_fn=lambda m: m)
    assert same["max_loss_rel"] == 0 and same["min_grad_cos"] > 1 - 1e-9

    class Miscompiled(torch.nn.Module):  # keys and queries of the views swapped
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x1, x2):
            q1, q2, z1, z2 = self.model(x1, x2)
            return q2, q1, z2, z1

    wrong = speed.compiled_vs_eager(ctx, "vit_small", 2, compile_fn=Miscompiled)
    assert not correctness.within(wrong, profiles.TOLERANCES["bf16"])


def test_the_report_is_strict_json(tmp_path: Path) -> None:
    report = reporting.Report("cpu-reduced", "cpu")
    report.add("correctness", "x", "fail", values_nan=math.nan, worst=math.inf,
               per_step=[{"cos": -math.inf}])
    reporting.write(report, tmp_path)

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads((tmp_path / "gpu_check.json").read_text(), parse_constant=refuse)
    values = data["checks"][0]["values"]
    assert values["values_nan"] == "NaN" and values["worst"] == "Infinity"
    assert values["per_step"] == [{"cos": "-Infinity"}]
    assert data["gpu_used"] is False
    assert "no GPU was used" in (tmp_path / "gpu_check.md").read_text()
