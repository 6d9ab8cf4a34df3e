"""analysis/verdicts.py: the rule that turns seeds into "reproduced" / "not reproduced" /
"inconclusive", on hand-made numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    TOO_FEW,
    findings_for,
    to_markdown,
    verdict,
    verdict_table,
)


def test_the_rule():
    assert verdict([50, 51, 52], [40, 41, 42], +1)[0] == REPRODUCED
    assert verdict([50, 51, 52], [40, 41, 42], -1)[0] == NOT_REPRODUCED
    # diff 2, pooled std 1: exactly 2 stds is still noise
    result, diff, pooled = verdict([1.0, 3.0], [-1.0, 1.0], +1)
    assert (diff, pooled) == (2.0, pytest.approx(math.sqrt(2)))
    assert result == INCONCLUSIVE
    assert verdict([10.0, 10.0], [5.0, 5.0], +1)[0] == REPRODUCED  # no noise at all
    assert verdict([10.0], [5.0, 6.0], +1)[0] == TOO_FEW


def _runs(rows: list[tuple[str, str, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"patch_embed": p, "lr": lr, "seed": seed, "linear_top1": acc,
                          "knn_top1": acc - 5, "num_spikes_first": spikes, "max_knn_dip": 0.0,
                          "state": "done"} for p, lr, seed, acc, spikes in rows])


def test_a_study_gets_one_row_per_finding_with_the_rule_applied():
    rows = []
    for seed in range(3):
        rows += [("frozen", "1.5e-4", seed, 60.0 + seed, 0),
                 ("learned", "1.5e-4", seed, 50.0 + seed, 4 + seed),
                 ("frozen", "3.0e-4", seed, 55.0 + 3 * seed, 0),
                 ("learned", "3.0e-4", seed, 56.0 + 3 * seed, 9)]
    runs = _runs(rows)
    runs.loc[(runs["patch_embed"] == "learned") & (runs["lr"] == "3.0e-4") & (runs["seed"] == 2),
             "state"] = "diverged"
    table = verdict_table("patch_proj", runs, "linear_top1").set_index("finding")
    assert list(table.index) == [
        "frozen patch projection beats learned at lr 1.5e-4",
        "frozen patch projection beats learned at lr 3.0e-4 (not in the paper)",
        "learned projection has more first-layer gradient spikes than frozen at lr 3.0e-4 "
        "(not in the paper)",
        "learned projection has deeper kNN dips than frozen at lr 3.0e-4 (not in the paper)"]
    first = table.iloc[0]
    assert first["verdict"] == REPRODUCED and first["diff"] == 10.0
    assert first["A"] == "61.00 ± 1.00 (n=3)" and first["B"] == "51.00 ± 1.00 (n=3)"
    assert table.iloc[1]["verdict"] == INCONCLUSIVE  # the diverged seed gives no accuracy
    assert table.iloc[1]["B"].endswith("(n=2)")
    assert table.iloc[2]["verdict"] == REPRODUCED  # spikes count the diverged run too
    assert table.iloc[3]["verdict"] == INCONCLUSIVE  # no dips anywhere: diff 0
    assert "**reproduced**" in to_markdown(table.reset_index())


def test_negatives_findings_follow_the_levels_present():
    runs = pd.DataFrame([{"mechanism": m, "K": k, "seed": 0, "state": "done"}
                         for m, ks in (("queue", ("256", "4096", "16384")),
                                       ("memory_bank", ("256", "4096")),
                                       ("end_to_end", ("256",))) for k in ks])
    claims = [f.claim for f in findings_for("negatives", runs)]
    assert claims == ["queue beats memory bank at K=256", "queue beats memory bank at K=4096",
                      "memory_bank gains from more negatives (K=4096 over K=256)",
                      "queue gains from more negatives (K=16384 over K=256)"]


def test_the_pixels_note_gives_the_overall_and_per_level_margins():
    from analysis.report import pixels_note

    runs = pd.DataFrame({
        "state": ["done"] * 4 + ["running"],
        "factor_label": ["lr=1", "lr=1", "lr=9", "lr=9", "lr=1"],
        "knn_top1": [33.0, 35.0, 25.0, 27.0, 90.0],
        "knn_top1_pixels": [22.0] * 5,
    })
    note = pixels_note(runs)
    assert "25.0-35.0 % (mean 30.0) against 22.0 %" in note and "+8.0 points" in note
    assert "best `lr=1` 34.0 % (+12.0), worst `lr=9` 26.0 % (+4.0)" in note
    assert "1 of 2 levels are 10 or more points above the pixels" in note
    assert pixels_note(runs.drop(columns="knn_top1_pixels")) == ""
