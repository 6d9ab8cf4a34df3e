"""Verdicts: the tests (analysis/stats.py), the table (analysis/verdicts.py), the findings a
study declares (runfolder/study.py), and a null simulation through the same code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from moco3.analysis import stats
from moco3.analysis.study import Study
from moco3.analysis.verdicts import code_state, to_markdown, verdict_table
from moco3.runfolder.study import Finding, FindingError, parse_findings


# -- the statistics ---------------------------------------------------------------------------
def test_welch_matches_the_formula():
    a, b = np.array([32.0, 31.6, 32.0]), np.array([29.0, 30.5, 30.6])
    out = stats.compare(a, b, paired=False)
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    diff = a.mean() - b.mean()
    assert out["diff"] == pytest.approx(diff)
    assert out["df"] == pytest.approx(df)
    assert out["p"] == pytest.approx(2 * sps.t.sf(diff / se, df))
    half = sps.t.ppf(0.975, df) * se
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(diff - half),
                                               pytest.approx(diff + half))
    pooled = math.sqrt((2 * a.var(ddof=1) + 2 * b.var(ddof=1)) / 4)
    assert out["g"] == pytest.approx(diff / pooled * (1 - 3 / (4 * 6 - 9)))


def test_paired_uses_the_per_seed_differences():
    a, b = np.array([50.0, 52.0, 55.0, 51.0]), np.array([49.0, 51.5, 53.0, 50.2])
    out = stats.compare(a, b, paired=True)
    d = a - b
    assert out["df"] == 3 and out["sd"] == pytest.approx(d.std(ddof=1))
    assert out["p"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    # The seeds move both arms together: pairing sees through it, Welch does not.
    assert out["p"] < 0.05 < stats.compare(a, b, paired=False)["p"]


def test_no_noise_and_too_few_seeds():
    out = stats.compare(np.array([10.0, 10.0]), np.array([5.0, 5.0]), paired=False)
    assert out["p"] == 0 and out["ci_low"] == out["ci_high"] == 5
    out = stats.compare(np.array([10.0]), np.array([5.0, 6.0]), paired=False)
    assert math.isnan(out["p"]) and out["diff"] == 4.5


def test_holm():
    assert stats.holm(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm(np.array([0.2, np.nan, 0.01]))
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)  # m counts the tested findings only
    np.testing.assert_allclose(stats.holm(np.array([[0.5, 0.5], [0.01, 0.9]])),
                               [[1.0, 1.0], [0.02, 0.9]])


def test_words():
    assert list(stats.words(np.array([0.01, 0.01, 0.2, np.nan]),
                            np.array([2.0, -2.0, 5.0, 5.0]), 1)) == [
        stats.REPRODUCED, stats.CONTRADICTED, stats.INCONCLUSIVE, stats.INCONCLUSIVE]


def test_power_mdd_and_seeds_needed_agree():
    mdd = stats.mdd(1.0, 5, paired=False)
    assert stats.power(mdd, 1.0, 5, paired=False) == pytest.approx(0.8, abs=1e-4)
    assert 1.9 < mdd < 2.3  # d of about 2 at n = 5
    n = stats.seeds_needed(1.0, 1.0, paired=False)
    assert stats.power(1.0, 1.0, n, False) >= 0.8 > stats.power(1.0, 1.0, n - 1, False)
    assert n == 17  # the textbook d = 1 answer
    assert stats.seeds_needed(0.001, 1.0, paired=False) is None  # beyond MAX_SEEDS
    assert stats.mdd(1.0, 3, False, alpha=0.01) > stats.mdd(1.0, 3, False)


# -- a null simulation and a true effect, through the verdict code ------------------------------
def _simulate(rng, studies: int, findings: int, n: int, effect: np.ndarray, paired: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """Seed values of `studies` x `findings` comparisons, n seeds each, seed std 0.5-1.5
    points per finding, true A - B `effect` (in seed stds); returns the verdict words."""
    sd = rng.uniform(0.5, 1.5, size=(studies, findings, 1))
    seed_effect = rng.normal(size=(studies, findings, n)) * sd * 0.5 if paired else 0.0
    a = 60 + effect[:, None] * sd + seed_effect + rng.normal(size=(studies, findings, n)) * sd
    b = 60 + seed_effect + rng.normal(size=(studies, findings, n)) * sd
    out = stats.compare(a, b, paired=paired)
    return stats.words(stats.holm(out["p"]), out["diff"], 1), sd[..., 0]


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("paired", [False, True])
def test_no_true_effect_gives_a_finding_at_most_5_percent_of_studies(n, paired):
    rng = np.random.default_rng(n + 10 * paired)
    studies, findings = 1000, 8
    verdicts, _ = _simulate(rng, studies, findings, n, np.zeros(findings), paired)
    any_claim = (verdicts != stats.INCONCLUSIVE).any(axis=1).mean()
    margin = 3 * math.sqrt(0.05 * 0.95 / studies)  # 3 Monte Carlo standard errors
    assert any_claim <= 0.05 + margin


@pytest.mark.parametrize("paired", [False, True])
def test_a_true_effect_of_two_seed_stds_is_found_at_the_claimed_power(paired):
    rng = np.random.default_rng(7 + paired)
    studies, n = 2000, 5
    verdicts, sd = _simulate(rng, studies, 1, n, np.array([2.0]), paired)
    found = (verdicts[:, 0] == stats.REPRODUCED).mean()
    # What the table claims for this comparison: the power of the test it uses, at the true
    # std of what that test sees (paired: the per-seed differences).
    noise = math.sqrt(2 * 1.0 ** 2) if paired else 1.0  # in units of the seed std
    claimed = stats.power(2.0, noise, n, paired)
    assert abs(found - claimed) <= 3 * math.sqrt(claimed * (1 - claimed) / studies) + 0.01
    # A true difference of the table's MDD80 is found 4 times in 5.
    effect = stats.mdd(noise, n, paired)
    verdicts, _ = _simulate(rng, studies, 1, n, np.array([effect]), paired)
    found = (verdicts[:, 0] == stats.REPRODUCED).mean()
    assert abs(found - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / studies) + 0.01
    # Among other findings with no effect, Holm finds it at least at the claimed power at
    # alpha / m, which the table's MDD80 and seeds-needed use.
    verdicts, _ = _simulate(rng, studies, 4, n, np.array([2.0, 0, 0, 0]), paired)
    claimed = stats.power(2.0, noise, n, paired, alpha=0.05 / 4)
    found = (verdicts[:, 0] == stats.REPRODUCED).mean()
    assert found >= claimed - 3 * math.sqrt(claimed * (1 - claimed) / studies)


# -- declared findings ----------------------------------------------------------------------
LEVELS = {"patch_embed": ["learned", "frozen"], "lr": ["1.5e-4", "3.0e-4"]}


def _finding(**change) -> dict:
    return {"claim": "frozen beats learned", "metric": "linear_top1", "sign": 1,
            "a": {"patch_embed": "frozen", "lr": "1.5e-4"},
            "b": {"patch_embed": "learned", "lr": "1.5e-4"}, **change}


def test_parse_findings_and_refusals():
    (f,) = parse_findings([_finding(paper_diff=1.7)], LEVELS, "ablation x")
    assert f.a == {"patch_embed": "frozen", "lr": "1.5e-4"} and f.paper_diff == 1.7
    bad = [
        (_finding(a={"patch_embed": "frozen", "lr": "9e-9"}), "selects lr=9e-9, which is not "
         "a level of lr (levels: 1.5e-4, 3.0e-4)"),
        (_finding(b={"tau": "0.2"}), "names factor 'tau', which the study does not have"),
        (_finding(metric="top5"), "metric 'top5' is not one of"),
        (_finding(sign=2), "sign must be +1"),
        (_finding(paper_diff=-1.0), "disagrees with sign"),
        (_finding(colour="red"), "unknown key(s) colour"),
        (_finding(b=_finding()["a"]), "select the same runs"),
    ]
    for entry, message in bad:
        with pytest.raises(FindingError, match=None) as err:
            parse_findings([entry], LEVELS, "ablation x")
        text = str(err.value)
        assert message in text and text.count(". ") == 0 and text.endswith("."), text
        assert text.startswith("ablation x: finding 1 ('frozen beats learned')")


def _runs(values: dict[tuple[str, str], list[float]], commit: str = "abc") -> pd.DataFrame:
    rows = []
    for (patch, lr), accs in values.items():
        for seed, acc in enumerate(accs):
            rows.append({"patch_embed": patch, "lr": lr, "seed": seed, "state": "done",
                         "linear_top1": acc, "knn_top1": acc - 5, "num_spikes_first": seed,
                         "env.commit": commit, "run_dir": f"{patch},{lr}/seed={seed}"})
    return pd.DataFrame(rows)


def test_the_table_pairs_by_seed_corrects_and_prices():
    runs = _runs({("frozen", "1.5e-4"): [61.0, 62.0, 63.0, 61.5],
                  ("learned", "1.5e-4"): [60.0, 60.9, 62.1, 60.4],
                  ("frozen", "3.0e-4"): [50.0, 55.0, 52.0],
                  ("learned", "3.0e-4"): [56.0, 51.0, 57.0, 54.0]})
    findings = parse_findings([_finding(paper_diff=1.7),
                               _finding(claim="frozen beats learned at 3e-4", in_paper=False,
                                        a={"patch_embed": "frozen", "lr": "3.0e-4"},
                                        b={"patch_embed": "learned", "lr": "3.0e-4"})],
                              LEVELS, "x")
    cells = [{"factors": {"patch_embed": p, "lr": lr}, "gpu_hours": 10.0}
             for p in LEVELS["patch_embed"] for lr in LEVELS["lr"]]
    table = verdict_table(Study("patch_proj", findings, cells), runs)
    first, second = table.iloc[0], table.iloc[1]
    assert first["test"] == stats.PAIRED and second["test"] == stats.WELCH  # seeds differ
    assert first["p_holm"] == pytest.approx(min(1, 2 * min(first["p"], second["p"]))
                                            if first["p"] < second["p"] else
                                            max(2 * second["p"], first["p"]))
    assert first["verdict"] == stats.REPRODUCED and first["diff"] == pytest.approx(1.025)
    assert second["verdict"] == stats.INCONCLUSIVE and second["finding"].endswith(
        "(not in the paper)")
    assert first["gpu_hours"] == 20.0 * first["seeds_needed"]
    assert first["mdd80"] == pytest.approx(stats.mdd(first["sd"], 4, True, alpha=0.025))
    assert first["other"].startswith("knn_top1: +1.02 [")
    markdown = to_markdown(table)
    assert "paired t" in markdown and "**reproduced**" in markdown and "one commit" in markdown


def test_a_verdict_over_mixed_code_says_so():
    assert code_state(pd.DataFrame({"env.commit": ["abc", "abc"]})) == ""
    assert code_state(pd.DataFrame({"env.commit": ["abc", "def+dirty"]})) == \
        "mixed code: 2 commits (abc, def); uncommitted changes"
    assert code_state(pd.DataFrame({"env.commit": ["abc / abc+dirty"]})) == \
        "mixed code: uncommitted changes"


def test_findings_without_runs_are_left_out_and_diverged_runs_count_for_instability():
    runs = _runs({("frozen", "1.5e-4"): [61.0, 62.0], ("learned", "1.5e-4"): [60.0, 61.0]})
    runs.loc[3, "state"] = "diverged"
    spikes = Finding("spikes", {"patch_embed": "learned", "lr": "1.5e-4"},
                     {"patch_embed": "frozen", "lr": "1.5e-4"}, 1, "num_spikes_first")
    absent = Finding("absent", {"patch_embed": "frozen", "lr": "3.0e-4"},
                     {"patch_embed": "learned", "lr": "3.0e-4"}, 1, "linear_top1")
    accuracy = Finding("acc", {"patch_embed": "frozen", "lr": "1.5e-4"},
                       {"patch_embed": "learned", "lr": "1.5e-4"}, 1, "linear_top1")
    table = verdict_table(Study("x", [spikes, absent, accuracy]), runs).set_index("finding")
    assert list(table.index) == ["spikes", "acc"]
    assert table.loc["spikes", "B"].endswith("(n=2)")  # the diverged run counts
    assert table.loc["acc", "B"] == "60.00 (n=1)" and table.loc["acc", "test"] == "none (n < 2)"
    assert table.loc["acc", "verdict"] == stats.INCONCLUSIVE


def test_the_floors_note_gives_margins_over_pixels_and_random_init_per_level():
    from moco3.analysis.report import floors_note

    runs = pd.DataFrame({
        "state": ["done"] * 4 + ["running"],
        "factor_label": ["lr=1", "lr=1", "lr=9", "lr=9", "lr=1"],
        "run_dir": ["a", "b", "c", "d", "e"],
        "knn_top1": [33.0, 35.0, 25.0, 27.0, 90.0],
        "knn_top1_pixels": [22.0] * 5,
    })
    knn = pd.DataFrame({"run_dir": list("abcde") * 2, "step": [0] * 5 + [10] * 5,
                        "knn_top1": [24.0, 24.0, 23.0, 23.0, 24.0, 1, 1, 1, 1, 1]})
    note = floors_note(runs, knn)
    assert "25.0-35.0 % (mean 30.0) against 22.0 % for pixels (+8.0 points) and 23.5 % " \
           "for random init (+6.5 points)" in note
    assert "| `lr=1` | 34.0 | +12.0 | +10.0 |" in note
    assert "| `lr=9` | 26.0 | +4.0 | +3.0 |" in note
    assert "1 of 2 levels 10 or more points over pixels, 1 of 2 levels 10 or more points " \
           "over random init" in note
    assert floors_note(runs.drop(columns="knn_top1_pixels")) == ""


# -- a user's own study, end to end: YAML -> launch -> study.json -> the report command ------
USER_STUDY = """\
reproduces: "not in the paper: a temperature pair"
description: "Only tau varies; batch, steps and lr are shared."
seeds: [0, 1, 2]
factors:
  tau:
    "0.1": {moco.tau: 0.1}
    "0.2": {moco.tau: 0.2}
findings:
  - {claim: "tau 0.2 beats tau 0.1 on kNN", metric: knn_top1, sign: 1, paper_diff: 1.0,
     a: {tau: "0.2"}, b: {tau: "0.1"}}
  - {claim: "tau 0.2 loses on the probe", metric: linear_top1, sign: -1,
     a: {tau: "0.2"}, b: {tau: "0.1"}}
"""


def _fake_job(monkeypatch):
    """moco3's train and probe replaced by writers of finished run folders whose numbers
    are a function of (tau, seed): tau 0.2 is about 5 kNN and 3 probe points better."""
    import moco3.probe
    import moco3.train
    from moco3.experiments import rundir
    from moco3.runlog import RunLog

    def train(cfg, run_dir, **job):
        log = RunLog(Path(run_dir))
        gain = 5.0 + [0.4, -0.3, 0.2][cfg.seed] if cfg.moco.tau == 0.2 else 0.0
        knn = 40.0 + gain + [0.1, -0.2, 0.3][cfg.seed]
        log.set_state("running", step=0, total_steps=2)
        log.append({"kind": "knn", "step": 0, "knn_top1": 20.0})
        log.append({"kind": "knn", "step": 2, "knn_top1": knn})
        log.write_summary({"state": "done", "knn_top1": knn, "knn_top1_pixels": 15.0})
        log.set_state("running", step=2, phase="probe")
        return "done"

    def probe(cfg, run_dir, **job):
        log = RunLog(Path(run_dir))
        last = 30.0 + (3.0 if cfg.moco.tau == 0.2 else 0.0) + [0.2, 0.0, -0.1][cfg.seed]
        for epoch, top1 in enumerate((last - 1, last + 2, last)):
            log.append({"kind": "probe", "step": epoch, "probe_epoch": epoch,
                        "probe_loss": 1.0, "probe_top1": top1, "lr": 0.1})
        log.write_summary({"linear_top1": last + 2, "linear_top1_last": last})
        log.set_state("done", phase="done")
        return last + 2

    monkeypatch.setattr(rundir, "code_changed", lambda run_dir: None)
    monkeypatch.setattr(moco3.train, "train", train)
    monkeypatch.setattr(moco3.probe, "probe", probe)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from moco3.experiments.launch import CONF_DIR, hydra_argv

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=hydra_argv(overrides))


def test_a_users_own_study_gets_verdicts_through_the_report_command(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    from moco3.experiments.launch import launch
    from moco3.experiments.schema import register

    register()
    conf = tmp_path / "studies"
    (conf / "ablation").mkdir(parents=True)
    (conf / "ablation" / "temperature.yaml").write_text(USER_STUDY)
    monkeypatch.setenv("MOCO3_CONF_DIR", str(conf))
    _fake_job(monkeypatch)
    runs_root = tmp_path / "runs"
    cfg = _compose(["ablation=temperature", "launcher=debug", f"runs_root={runs_root}"])
    assert launch(cfg, "temperature", "tiny") == 0
    study = json.loads((runs_root / "temperature" / "study.json").read_text())
    assert [f["claim"] for f in study["findings"]] == ["tau 0.2 beats tau 0.1 on kNN",
                                                       "tau 0.2 loses on the probe"]
    assert {c["factors"]["tau"] for c in study["paper_cells"]} == {"0.1", "0.2"}
    assert study["design"] == "Only tau varies; batch, steps and lr are shared."

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "analysis" / "report.py"), "--runs-root",
                           str(runs_root), "--out", str(tmp_path / "report"), "--no-pdf"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "report" / "tables" / "temperature_verdicts.csv")
    knn, probe = table.iloc[0], table.iloc[1]
    assert knn["test"] == stats.PAIRED and knn["diff"] == pytest.approx(5.1)
    assert knn["verdict"] == stats.REPRODUCED
    assert knn["seeds_needed"] >= 2 and knn["gpu_hours"] > 0
    # The probe's final epoch decides (3 points), not its best epoch on the eval set.
    assert probe["diff"] == pytest.approx(3.0)
    assert probe["verdict"] == stats.CONTRADICTED  # the user declared the other sign
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "tau 0.2 beats tau 0.1 on kNN" in readme and "**reproduced**" in readme
    assert "for random init (+" in readme  # the floors
    assert "\nDesign: Only tau varies; batch, steps and lr are shared.\n" in readme


def test_a_finding_naming_a_missing_level_is_refused_at_compose_time(tmp_path, monkeypatch,
                                                                     capsys):
    from moco3.experiments.launch import launch
    from moco3.experiments.schema import register

    register()
    conf = tmp_path / "studies"
    (conf / "ablation").mkdir(parents=True)
    (conf / "ablation" / "temperature.yaml").write_text(USER_STUDY.replace('b: {tau: "0.1"}}',
                                                                           'b: {tau: "0.7"}}', 1))
    monkeypatch.setenv("MOCO3_CONF_DIR", str(conf))
    cfg = _compose(["ablation=temperature", "dry_run=true", f"runs_root={tmp_path}/runs"])
    assert launch(cfg, "temperature", "tiny") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("launch.py: error: ablation temperature: finding 1 ('tau 0.2 beats tau 0.1 "
                   "on kNN'): group B selects tau=0.7, which is not a level of tau (levels: "
                   "0.1, 0.2).")
    assert not (tmp_path / "runs").exists()


def test_the_shipped_findings_carry_the_papers_own_differences():
    """Every shipped accuracy finding whose two groups have a number in analysis/reference.py
    states their difference as paper_diff (and no other), on the paper's metric, linear
    top-1."""
    import yaml

    from moco3.analysis.reference import paper_number
    from moco3.experiments.launch import CONF_DIR

    checked = 0
    for path in sorted((CONF_DIR / "ablation").glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()).get("findings") or []:
            if not entry["metric"].endswith("top1"):
                assert entry.get("paper_diff") is None  # the paper gives no such number
                continue
            assert entry["metric"] == "linear_top1", entry["claim"]
            a, b = (paper_number(path.stem, entry[g]) for g in ("a", "b"))
            if a is None or b is None or not entry.get("in_paper", True):
                assert entry.get("paper_diff") is None or a is None or b is None, entry
                continue
            assert entry.get("paper_diff") == pytest.approx(a.value - b.value), entry["claim"]
            checked += 1
    assert checked == 7
