"""analysis/reference.py: the paper's numbers, looked up by ablation and factor labels."""

from __future__ import annotations

import pytest

from moco3.analysis.reference import (
    REFERENCES,
    level_rank,
    normalize_label,
    paper_number,
    reference_for,
)


@pytest.mark.parametrize("ablation,factors,value,tag", [
    ("none", {}, 76.5, "V"),
    ("batch_size", {"batch_size": "6144"}, 69.7, "V"),
    ("lr", {"lr": "1.5e-4"}, 71.7, "D"),
    ("lr", {"lr": "1e-4"}, 72.2, "V"),  # numeric labels compare by value
    ("momentum", {"momentum": "0"}, 74.3, "V"),
    ("patch_proj", {"patch_embed": "frozen", "lr": "1.5e-4"}, 73.4, "V"),
    ("patch_proj", {"lr": "0.5e-4", "patch_embed": "learned"}, 70.4, "D"),
    ("patch_proj", {"patch_embed": "frozen", "lr": "0.5e-4"}, 70.8, "D"),
    ("negatives", {"mechanism": "queue", "K": "65536"}, 60.6, "V"),
    ("negatives", {"mechanism": "end_to_end", "K": "1024"}, 57.0, "R"),
    ("optimizer", {"optimizer": "lamb", "lr": "8e-4"}, 66.5, "D"),
    ("cls_token", {"cls_token": "avgpool_ln"}, 69.7, "V"),
    ("head_bn", {"head_bn": "False"}, 74.4, "V"),  # case-insensitive text labels
    ("predictor", {"predictor": "true"}, 76.5, "V"),
])
def test_paper_numbers(ablation, factors, value, tag):
    number = paper_number(ablation, factors)
    assert number is not None and number.value == value and number.tag == tag
    assert number.source


def test_missing_numbers_are_none():
    assert paper_number("negatives", {"mechanism": "in_batch", "K": "4096"}) is None
    assert paper_number("batch_size", {"batch_size": "512"}) is None
    assert paper_number("my_own_ablation", {"x": "1"}) is None
    assert reference_for("my_own_ablation") is None


def test_frozen_is_learned_plus_the_papers_gain():
    for lr, gain in (("0.5e-4", 0.4), ("1.0e-4", 0.6), ("1.5e-4", 1.7)):
        learned = paper_number("patch_proj", {"patch_embed": "learned", "lr": lr}).value
        frozen = paper_number("patch_proj", {"patch_embed": "frozen", "lr": lr}).value
        assert frozen - learned == pytest.approx(gain)


def test_every_number_uses_its_ablations_levels():
    for name, ref in REFERENCES.items():
        for number in ref.numbers:
            assert number.ablation == name and number.tag in ("V", "D", "R")
            for factor, label in number.factors:
                assert level_rank(name, factor, label) is not None, (name, factor, label)


def test_label_normalisation_and_level_order():
    assert normalize_label("1.0e-4") == normalize_label("1e-4") == normalize_label(0.0001)
    assert normalize_label("True") == "true"
    assert level_rank("batch_size", "batch_size", "6144") == 3
    assert level_rank("batch_size", "batch_size", "512") is None
    assert REFERENCES["batch_size"].numbers[3].note == "large dips, partial restarts"
