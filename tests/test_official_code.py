"""The benchmark's loader of the user's official code: where it reads, what it edits, and
that it refuses a revision its edits do not fit. (The real code is not in CI: a fake
checkout with the same import paths stands in for it.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks.official_code import (
    EDITS,
    apply_edits,
    load_official,
    official_step,
    read_sources,
)

VITS = """from timm.models.layers.helpers import to_2tuple
class VisionTransformerMoCo:
    def tokens(self):
        return self.num_tokens
"""
BUILDER = """import torch
def labels(logits):
    return torch.arange(3, dtype=torch.long).cuda()
"""


def fake_checkout(root):
    (root / "moco").mkdir(parents=True)
    (root / "vits.py").write_text(VITS)
    (root / "moco" / "builder.py").write_text(BUILDER)
    return root


def test_a_checkout_is_read_edited_and_imported(tmp_path):
    code = load_official(fake_checkout(tmp_path / "moco-v3"))
    assert code.vits.to_2tuple(3) == (3, 3)  # from timm.layers now
    obj = code.vits.VisionTransformerMoCo()
    obj.num_prefix_tokens = 1
    assert obj.tokens() == 1
    assert code.builder.labels(torch.zeros(2, device="cpu")).device.type == "cpu"
    # under private names: a user's own `moco` or `vits` module is never shadowed
    assert code.vits.__name__.startswith("_moco3_official_code.")
    assert "vits" not in sys.modules


def test_a_git_directory_is_read_at_a_revision(tmp_path):
    repo = fake_checkout(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    texts, origin = read_sources(repo / ".git")
    assert texts == {"vits.py": VITS, "moco/builder.py": BUILDER}
    assert " at " in origin


def test_an_edit_that_does_not_fit_stops_loading():
    with pytest.raises(SystemExit, match="matched 0 times in vits.py"):
        apply_edits({"vits.py": "import timm\n", "moco/builder.py": BUILDER})
    assert len(EDITS) == 3


def test_a_folder_without_the_official_code_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="neither a checkout"):
        read_sources(tmp_path)


class _Recorder(torch.nn.Module):
    """Stands in for MoCo_ViT: model(x1, x2, m) -> loss, noting whether fp16 autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        kind = x1.device.type
        self.autocast.append((torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)))
        return (self.linear(x1) * self.linear(x2)).float().mean()


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "fp16-amp"])
def test_the_official_step_runs_its_gpu_recipe_with_a_scaler(amp: bool) -> None:
    """With an enabled GradScaler the step is main_moco.py's GPU step: forward under fp16 autocast,
    backward and AdamW step through the scaler; with a disabled one, plain fp32."""
    torch.manual_seed(0)
    model = _Recorder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.linear.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    x1, x2 = torch.randn(8, 4), torch.randn(8, 4)
    loss = official_step(model, opt, x1, x2, 0.99, scaler)
    assert torch.isfinite(loss)
    enabled, dtype = model.autocast[0]
    assert enabled is amp and (dtype == torch.float16 or not amp)
    assert not torch.equal(model.linear.weight, before)  # the step was taken, not skipped
