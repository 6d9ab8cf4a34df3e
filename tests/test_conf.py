"""The config tree (experiments/conf) and the grid expansion (experiments/grid.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from moco3.analysis.reference import REFERENCES, normalize_label
from moco3.experiments import cost
from moco3.experiments.grid import GridError, at_scale, expand, make_run_id, sanitize
from moco3.experiments.launch import CONF_DIR
from moco3.experiments.schema import SCALES, register
from moco3.recipes import r50_recipe
from moco3.runfolder.negatives import negatives_per_query
from moco3.schedules import momentum_at

register()

EXPECTED_RUNS = {
    "none": 1, "batch_size": 4, "patch_proj": 6, "lr": 3, "optimizer": 4, "momentum": 4,
    "negatives": 19, "pos_embed": 3, "cls_token": 3, "head_bn": 2, "predictor": 2,
    "stability_ladder": 10, "stability_edge": 4,
}
# The mini scale runs 3 seeds of every level; patch_proj adds an edge lr, negatives keeps
# three K for queue and memory bank and two for in-batch and end-to-end.
MINI_RUNS = {"patch_proj": 8 * 3, "negatives": 10 * 3}
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))


def _compose(overrides: list[str], conf_dir: Path | None = None):
    if conf_dir is not None:
        overrides = [*overrides, f"hydra.searchpath=[file://{conf_dir}]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _runs(ablation: str, scale: str = "tiny", extra: tuple[str, ...] = (),
          conf_dir: Path | None = None):
    cfg = _compose([f"ablation={ablation}", f"scale={scale}", *extra], conf_dir)
    return expand(cfg, ablation, scale)


def test_the_required_studies_are_all_there():
    assert set(EXPECTED_RUNS) <= set(ABLATIONS)


def test_the_readmes_name_every_study():
    """The README's config tree and study table, and the ablation folder's table, list every
    ablation file: a study a user cannot find there does not exist for them."""
    readme = (CONF_DIR.parents[1] / "README.md").read_text()
    tree = readme[readme.index("  ablation/"):readme.index("(+ README.md)")]
    folder = (CONF_DIR / "ablation" / "README.md").read_text()
    for name in ABLATIONS:
        assert re.search(rf"\b{name}\b", tree), f"README's config tree lacks {name}"
        assert f"| `{name}` |" in readme, f"README's study table lacks {name}"
        assert f"\n| {name} |" in folder, f"ablation/README.md's table lacks {name}"


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_composes_and_expands_at_every_scale(ablation, scale):
    runs = _runs(ablation, scale)
    expected = MINI_RUNS.get(ablation, EXPECTED_RUNS.get(ablation, 0) * 3) \
        if scale == "mini" else EXPECTED_RUNS.get(ablation)
    assert len(runs) == (expected or len(runs))
    assert len({r.run_id for r in runs}) == len(runs)
    assert len({r.config_hash for r in runs}) == len(runs)
    for r in runs:
        assert r.config.meta.ablation == ablation and r.config.meta.scale == scale
        assert r.config.meta.run_id == r.run_id and r.config.meta.config_hash == r.config_hash
        assert dict(r.config.meta.factors) == r.factors
        assert sanitize(r.run_id.replace("/", "")) == r.run_id.replace("/", "")


@pytest.mark.parametrize("ablation", sorted(REFERENCES))
def test_factor_names_and_labels_are_the_reports(ablation):
    """analysis/reference.py keys the paper's numbers by exactly these."""
    levels = REFERENCES[ablation].levels
    runs = _runs(ablation, "paper")
    for r in runs:
        assert set(r.factors) == set(levels), r.run_id
        for name, label in r.factors.items():
            assert normalize_label(label) in {normalize_label(x) for x in levels[name]}
    for number in REFERENCES[ablation].numbers:  # every paper number has a run
        wanted = {k: normalize_label(v) for k, v in number.factor_dict.items()}
        assert any({k: normalize_label(v) for k, v in r.factors.items()} == wanted
                   for r in runs), number


def test_per_scale_values_keep_the_papers_ratios():
    batches = {s: [r.config.train.batch_size for r in _runs("batch_size", s)] for s in SCALES}
    assert batches["paper"] == [1024, 2048, 4096, 6144]
    assert batches["tiny"] == [64, 128, 256, 384]
    gpus = [r.resources["gpus"] for r in _runs("batch_size", "paper")]
    assert gpus == [16, 32, 64, 96]  # 64 images per GPU, as the official runs
    assert [r.resources["gpus"] for r in _runs("batch_size", "tiny")] == [0, 0, 0, 0]
    lrs = {s: [r.config.optim.base_lr for r in _runs("patch_proj", s, ("seeds=[0]",))][:3]
           for s in SCALES}
    for s in SCALES:
        assert lrs[s][1] / lrs[s][0] == pytest.approx(2.0)
        assert lrs[s][2] / lrs[s][0] == pytest.approx(3.0)
    assert lrs["paper"] == pytest.approx([0.5e-4, 1.0e-4, 1.5e-4])


def test_the_tiny_scale_is_the_documented_one():
    """scale/tiny.yaml as the README and its own comments describe it (measured there)."""
    cfg = _runs("none")[0].config
    m = cfg.model
    assert (m.arch, m.depth, m.embed_dim, m.num_heads, m.img_size, m.patch_size, m.mlp_dim,
            m.dim) == ("vit_tiny", 4, 96, 3, 32, 8, 512, 128)
    assert (cfg.data.name, cfg.data.num_train, cfg.data.num_val) == ("textures", 2000, 500)
    assert (cfg.data.crop_min, cfg.moco.m0, cfg.optim.warmup_epochs) == (0.5, 0.9, 1)
    t = cfg.train
    assert (t.batch_size, t.epochs, t.precision, t.knn_memory, t.knn_queries) == (
        128, 10, "auto", 2000, 500)
    assert (cfg.probe.epochs, cfg.probe.batch_size, cfg.probe.augment) == (30, 256, False)


def test_the_mini_scale_is_tinys_model_trained_longer_with_three_seeds():
    tiny, mini = _runs("none")[0].config, _runs("none", "mini")
    assert [r.seed for r in mini] == [0, 1, 2]
    mini = mini[0].config
    # A square patch projection (3 x 4 x 4 = 48 -> 48), otherwise tiny's model.
    m = mini.model
    assert 3 * m.patch_size ** 2 <= m.embed_dim == 48 and m.patch_size == 4
    assert {k: v for k, v in mini.model.items() if k not in ("patch_size", "embed_dim")} == {
        k: v for k, v in tiny.model.items() if k not in ("patch_size", "embed_dim")}
    # A larger evaluation set (seed-to-seed differences of a point or two need it).
    assert {**mini.data, "num_val": 500} == {**tiny.data}
    assert (mini.data.num_val, mini.train.knn_queries) == (2000, 2000)
    assert (mini.train.epochs, tiny.train.epochs) == (20, 10)
    negatives = _runs("negatives", "mini")
    assert sorted({r.factors["K"] for r in negatives if r.factors["mechanism"] == "queue"},
                  key=int) == ["1024", "4096", "65536"]


# Training images per data set where the config does not count them (generated data sets
# have data.num_train).
_TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "stl10": 5000, "imagefolder": 1281167,
                 "imagenet100": 126689}


def _train_images(cfg) -> int:
    return (cfg.data.num_train if cfg.data.name in ("synthetic", "textures")
            else _TRAIN_IMAGES[cfg.data.name])


def _steps(cfg) -> int:
    return cfg.train.epochs * (_train_images(cfg) // cfg.train.batch_size)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_a_queue_or_bank_k_is_at_most_a_quarter_of_the_training_images(ablation, scale):
    """Larger, a queue holds stale keys of the query's own image and a bank's draws crowd
    the rows of the batch: K would no longer be the mechanism's K."""
    for r in _runs(ablation, scale, ("seeds=[0]",)):
        c = r.config
        if c.moco.negatives in ("queue", "memory_bank"):
            assert 4 * c.moco.queue_size <= _train_images(c), (r.run_id, c.moco.queue_size)


def _negatives_per_query(run) -> int:
    return negatives_per_query(run.config.moco.negatives, run.config.train.batch_size,
                               run.config.moco.queue_size)


def test_negatives_at_mini_vary_one_thing_per_comparison():
    runs = _runs("negatives", "mini", ("seeds=[0]",))
    by = {(r.factors["mechanism"], r.factors["K"]): r.config for r in runs}
    real = {(r.factors["mechanism"], r.factors["K"]): _negatives_per_query(r) for r in runs}
    # The real K: queue and bank labels / 64; the batch mechanisms see the batch - 1 (batch =
    # label / 16), so two queue / bank levels sit beside in-batch's.
    assert [real[("queue", k)] for k in ("1024", "4096", "65536")] == [16, 64, 1024]
    assert [real[("memory_bank", k)] for k in ("1024", "4096", "65536")] == [16, 64, 1024]
    assert [real[("in_batch", k)] for k in ("256", "1024")] == [15, 63]
    assert [real[("end_to_end", k)] for k in ("256", "1024")] == [15, 63]
    stored = [c for (m, _), c in by.items() if m in ("queue", "memory_bank")]
    for key in ("train.batch_size", "train.epochs", "optim.base_lr", "train.knn_every",
                "optim.warmup_epochs", "data.num_train"):
        assert len({OmegaConf.select(c, key) for c in stored}) == 1, key
    for (mechanism, _), c in by.items():
        warmup = round(c.optim.warmup_epochs * (_train_images(c) // c.train.batch_size))
        assert (_steps(c) >= 300 and c.train.knn_every == 50 and warmup == 32), mechanism


def test_momentum_at_mini_moves_its_slowest_level():
    """The momentum encoder of m = 0.999 (0.990 at mini, cosine to 1) keeps at most a quarter
    of its initial weights by the end of the run: it has moved."""
    runs = {r.factors["momentum"]: r.config for r in _runs("momentum", "mini", ("seeds=[0]",))}
    assert [runs[k].moco.m0 for k in ("0", "0.9", "0.99", "0.999")] == pytest.approx(
        [0.0, 0.9 ** 10, 0.99 ** 10, 0.999 ** 10], abs=2e-3)
    c = runs["0.999"]
    total = _steps(c)
    kept = math.prod(momentum_at(t, total, c.moco.m0) for t in range(total))
    assert 0.1 < kept <= 0.25  # 22 % at mini's 300 steps


def test_batch_size_at_mini_gives_the_largest_batch_steps_and_one_cadence_in_images():
    runs = [r.config for r in _runs("batch_size", "mini", ("seeds=[0]",))]
    assert [c.train.batch_size for c in runs] == [32, 64, 128, 192]  # the paper's / 32
    assert min(_steps(c) for c in runs) >= 300
    assert {c.train.knn_every * c.train.batch_size for c in runs} == {_train_images(runs[0])}
    assert len({c.train.epochs for c in runs}) == len({c.optim.base_lr for c in runs}) == 1


def test_stability_ladder_climbs_lr_and_batch_past_the_papers_range():
    runs = [r.config for r in _runs("stability_ladder", "mini", ("seeds=[0]",))]
    assert {c.model.patch_embed for c in runs} == {"learned"}
    assert {c.train.knn_every for c in runs} == {5}
    at_128 = sorted(c.optim.base_lr for c in runs if c.train.batch_size == 128)
    past = [lr for lr in at_128 if lr > 1.5e-3]  # the paper's top at mini
    assert len(past) >= 6
    assert all(b / a == pytest.approx(2.0) for a, b in zip(past, past[1:], strict=False))
    batches = sorted(c.train.batch_size for c in runs if c.train.batch_size > 128)
    assert batches == [256, 384, 512]
    assert all(_steps(c) >= 250 for c in runs)
    assert all(c.train.batch_size * 32 <= _train_images(c) for c in runs)


@pytest.mark.parametrize("scale", SCALES)
def test_stability_edge_reruns_the_ladders_own_levels(scale):
    """Its levels are the ladder's configurations exactly, at every scale: only the seeds
    (and so the verdicts) are new."""
    ladder = {r.run_id: r.config for r in _runs("stability_ladder", scale, ("seeds=[0]",))}
    edge = {r.run_id: r.config for r in _runs("stability_edge", scale, ("seeds=[0]",))}
    assert len(edge) == 4 and set(edge) <= set(ladder)
    for run_id, cfg in edge.items():
        mine, theirs = OmegaConf.to_container(cfg), OmegaConf.to_container(ladder[run_id])
        for c in (mine, theirs):
            c["meta"].pop("ablation")
        assert mine == theirs, run_id


def test_paper_scale_is_the_papers_recipe():
    cfg = _runs("none", "paper")[0].config
    assert (cfg.model.arch, cfg.model.patch_size, cfg.model.img_size) == ("vit_base", 16, 224)
    assert (cfg.train.batch_size, cfg.train.epochs) == (4096, 300)
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay) == ("adamw", 1.5e-4, 0.1)
    assert (cfg.optim.warmup_epochs, cfg.moco.m0, cfg.moco.tau) == (40, 0.99, 0.2)
    assert (cfg.moco.momentum_schedule, cfg.model.patch_embed) == ("cosine", "frozen")
    studies = _runs("lr", "paper")
    assert {r.config.train.epochs for r in studies} == {100}


@pytest.mark.parametrize("epochs,lr,wd,m0", [
    (100, 0.6, 1e-6, 0.99), (300, 0.3, 1e-6, 0.99), (1000, 0.3, 1.5e-6, 0.996),
    (200, 0.3, 1e-6, 0.99),  # no official 200-epoch setting: the nearest, 300
])
def test_resnet50_gets_the_official_r50_recipe_for_its_length(epochs, lr, wd, m0):
    """moco-v3 CONFIG.md: 100 / 300 / 1000-epoch R50 settings."""
    cfg = _runs("none", "paper", ("model=resnet50", f"train.epochs={epochs}"))[0].config
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay) == ("lars", lr, wd)
    assert (cfg.moco.tau, cfg.moco.m0, cfg.data.crop_min, cfg.probe.lr_base) == (
        1.0, m0, 0.2, 0.1)
    # A study that sets the length itself gets the setting for that length.
    for run in _runs("negatives", "paper"):
        c = run.config
        assert (c.train.epochs, c.optim.base_lr, c.optim.weight_decay, c.moco.m0) == (
            200, 0.3, 1e-6, 0.99)


@pytest.mark.parametrize("scale", SCALES)
def test_resnet50_takes_the_r50_recipe_over_the_scales_adamw_values(scale):
    """model=resnet50 picks LARS; the recipe's lr, wd and warmup win over what the scale
    sets for AdamW, at every scale; the command line and optim=adamw still choose."""
    cfg = _runs("none", scale, ("model=resnet50",))[0].config
    epochs = cfg.train.epochs
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.weight_decay) == (
        "lars", r50_recipe("base_lr", epochs), r50_recipe("weight_decay", epochs))
    assert cfg.optim.warmup_epochs == min(10, epochs / 10)
    assert cfg.optim.base_lr >= 0.3  # the recipe's LARS lrs, never a scale's AdamW 1e-4-1e-3
    adamw = _runs("none", scale)[0].config.optim
    chosen = _runs("none", scale, ("model=resnet50", "optim=adamw"))[0].config.optim
    assert (chosen.name, chosen.base_lr, chosen.warmup_epochs) == (
        "adamw", adamw.base_lr, adamw.warmup_epochs)
    mine = _runs("none", scale, ("model=resnet50", "optim.base_lr=0.05",
                                 "optim.warmup_epochs=3"))[0].config.optim
    assert (mine.base_lr, mine.warmup_epochs) == (0.05, 3)


def _small_scale_claims() -> list[tuple[str, object, object, list[str]]]:
    """(key, small-scale value, paper value, scales) of each line of divergences.md's
    small-scale section that names a config key."""
    text = (CONF_DIR.parents[1] / "docs" / "divergences.md").read_text()
    section = text.split("## The small scales")[1].split("\n## ")[0]
    claims = []
    for line in section.splitlines():
        if not line.startswith("* `") or "." not in line.split("`")[1]:
            continue
        match = re.match(r"\* `([a-z_]+\.[a-z_0-9]+)` (\S+) instead of (\S+) \(([a-z, ]+)\):",
                         line)
        assert match, f"divergences.md: a key line the test cannot check: {line}"
        key, small, paper, scales = match.groups()
        claims.append((key, yaml.safe_load(small), yaml.safe_load(paper),
                       [s.strip() for s in scales.split(",")]))
    return claims


def test_the_divergences_page_states_the_scale_files_values():
    claims = _small_scale_claims()
    assert {c[0] for c in claims} >= {"data.crop_min", "moco.m0", "optim.warmup_epochs"}
    configs = {scale: _runs("none", scale)[0].config for scale in SCALES}
    for key, small, paper, scales in claims:
        assert OmegaConf.select(configs["paper"], key) == paper, key
        for scale in SCALES:
            value = OmegaConf.select(configs[scale], key)
            if scale in scales:
                assert value == small, (key, scale, value)
            else:
                assert value == paper, (key, scale, value)


def test_every_momentum_level_means_its_label():
    for scale in SCALES:
        runs = {r.factors["momentum"]: r.config.moco for r in _runs("momentum", scale)}
        assert (runs["0"].m0, runs["0"].momentum_schedule) == (0.0, "constant")
        assert all(m.momentum_schedule == "cosine" for k, m in runs.items() if k != "0")


@pytest.mark.parametrize("group,options", [
    ("model", ["vit_small", "vit_base", "vit_large", "vit_huge", "vit_conv_small",
               "vit_conv_base", "vit_tiny", "resnet50"]),
    ("data", ["synthetic", "digits", "cifar10", "cifar100", "stl10", "imagenet",
              "imagenet100"]),
    ("optim", ["adamw", "lars", "lamb"]),
    ("launcher", ["auto", "local", "slurm", "debug"]),
])
def test_every_group_option_composes(group, options):
    for option in options:
        extra = ("model.img_size=28", "model.patch_size=14") if option == "vit_huge" else ()
        runs = _runs("none", "tiny", (f"{group}={option}", *extra))
        assert len(runs) == 1


def test_a_mistyped_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="Could not override 'model.foo'") as e:
        _compose(["model.foo=1"])
    assert "Key 'foo' not in 'ModelConfig'" in str(e.value.__cause__)
    with pytest.raises(GridError, match="Key 'foo' not in 'ModelConfig'"):
        _runs("none", "tiny", ("+model.foo=1",))  # Hydra lets + append; the run schema does not
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["train.epochs=ten"])
    assert "could not be converted to Integer" in str(e.value) + str(e.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="Could not find 'ablation/nope'"):
        _compose(["ablation=nope"])


def _write(conf: Path, name: str, text: str) -> Path:
    (conf / "ablation").mkdir(parents=True, exist_ok=True)
    (conf / "ablation" / f"{name}.yaml").write_text(text)
    return conf


def test_a_users_ablation_from_another_directory(tmp_path):
    conf = _write(tmp_path, "temperature", """
reproduces: "tau sweep"
seeds: {tiny: [0, 1], paper: [0]}
factors:
  tau:
    "0.1": {moco.tau: 0.1}
    "0.2": {moco.tau: 0.2}
    "0.5": {moco.tau: 0.5}
""")
    runs = _runs("temperature", "tiny", conf_dir=conf)
    assert [r.run_id for r in runs] == [f"tau={t}/seed={s}" for t in ("0.1", "0.2", "0.5")
                                        for s in (0, 1)]
    assert [r.config.moco.tau for r in runs] == [0.1, 0.1, 0.2, 0.2, 0.5, 0.5]
    assert len(_runs("temperature", "paper", conf_dir=conf)) == 3
    assert len(_runs("temperature", "tiny", ("seeds=[3]",), conf_dir=conf)) == 3


def test_an_unquoted_numeric_label_is_refused(tmp_path):
    conf = _write(tmp_path, "bad", "factors:\n  m:\n    0.99: {moco.m0: 0.99}\n")
    with pytest.raises(ConfigCompositionException, match="incompatible with key type"):
        _runs("bad", conf_dir=conf)


@pytest.mark.parametrize("text,match", [
    ("factors:\n  x:\n    a: {model.nope: 1}\n", "x=a: 'model.nope' is not a config key"),
    ("factors:\n  x:\n    a: {moco.tau: 0.2}\n    b: {moco.tau: {paper: 0.3}}\n",
     "resolve to the same configuration"),
    ("factors:\n  x:\n    a: {moco.tau: -1.0}\n", "moco.tau=-1.0 must be greater than 0"),
    ("factors:\n  x:\n    a: {model.pos_embed: sine}\n", "model.pos_embed='sine' is not valid"),
    ("factors:\n  x: {a: {}}\ngrids:\n  - factors:\n      y: {b: {}}\n", "not both"),
    ("seeds: []\nfactors: {}\n", "seeds must be a non-empty list"),
    ("factors:\n  x:\n    a: {train.epochs: many}\n", "invalid run configuration"),
])
def test_bad_ablations_get_one_sentence(tmp_path, text, match):
    conf = _write(tmp_path, "bad", text)
    with pytest.raises(GridError, match=match):
        _runs("bad", conf_dir=conf)


def test_grids_union_and_grid_overrides():
    runs = _runs("negatives", "paper")
    by_id = {r.run_id: r for r in runs}
    queue = by_id["mechanism=queue,K=4096/seed=0"].config
    assert (queue.moco.negatives, queue.moco.queue_size, queue.train.batch_size) == (
        "queue", 4096, 256)
    e2e = by_id["mechanism=end_to_end,K=1024/seed=0"].config
    assert (e2e.moco.negatives, e2e.train.batch_size, e2e.model.arch) == (
        "end_to_end", 1024, "resnet50")
    assert "mechanism=end_to_end,K=4096/seed=0" not in by_id


def test_run_ids_and_scale_values():
    assert make_run_id({"lr": "1.0e-4", "opt": "a b/c"}, 2) == "lr=1.0e-4,opt=a_b_c/seed=2"
    assert make_run_id({}, 0) == "baseline/seed=0"
    assert at_scale({"tiny": 1, "paper": 2}, "small") == (False, None)
    assert at_scale({"tiny": 1, "paper": 2}, "paper") == (True, 2)
    assert at_scale({"lr": 1}, "paper") == (True, {"lr": 1})


def test_relative_data_roots_become_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("MOCO3_DATA", "some/where")
    run = _runs("none", "paper")[0]
    assert run.config.data.root == str(Path("some/where/imagenet").resolve())
    assert OmegaConf.is_missing(run.config, "seed") is False


def test_costs_follow_the_papers_anchor():
    assert cost.resnet50_macs(224) / 1e9 == pytest.approx(4.09, abs=0.01)
    assert cost.vit_macs(224, 16, 768, 12) / 1e9 == pytest.approx(17.56, abs=0.05)
    cfg = _runs("none", "paper")[0].config
    knn_every = cfg.train.knn_every
    # The anchor is the official pre-training, which has no kNN monitor and no probe.
    cfg.train.epochs, cfg.probe.enabled, cfg.train.knn_every = 100, False, 0
    assert cost.gpu_hours(cfg) == pytest.approx(24 * 128)
    cfg.train.epochs = 300
    assert cost.gpu_hours(cfg) == pytest.approx(3 * 24 * 128)
    cfg.train.knn_every = knn_every
    assert cost.gpu_hours(cfg) > 3 * 24 * 128
    tiny = _runs("none")[0].config
    assert cost.gpu_hours(tiny) < 0.05 and cost.cpu_core_hours(tiny) > 0
    assert cost.cpu_core_hours(tiny, "bf16") < cost.cpu_core_hours(tiny, "fp32")


def test_a_probe_without_augmentation_forwards_each_image_once():
    """It trains its classifier on features computed once (moco3/probe.py)."""
    cfg = _runs("none", "mini")[0].config
    cfg.probe.augment = False
    once = cost.probe_flops(cfg)
    cfg.probe.augment = True
    assert cost.probe_flops(cfg) == pytest.approx(once * cfg.probe.epochs)
    cfg.probe.enabled = False
    assert cost.probe_flops(cfg) == 0
