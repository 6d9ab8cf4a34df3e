"""The real official MoCo v3 step, imported from the user's copy of facebookresearch/moco-v3.

Nothing of the official code ships with moco3: `load_official(path)` reads `vits.py` and
`moco/builder.py` at run time from a checkout (a folder holding them) or from a git
directory (`git show <rev>:<file>`), applies the three edits a current environment needs,
and imports the result under private module names, so nothing clashes with this project.

The edits (each must match exactly once, or loading stops and says which did not, so a
newer official revision is never measured silently changed in some other way):

* vits.py imports `to_2tuple` from `timm.models.layers.helpers`, which timm 1.x moved to
  `timm.layers`;
* vits.py reads `self.num_tokens`, which timm 1.x renamed `num_prefix_tokens`;
* builder.py puts the loss labels on `.cuda()`; here they go to the logits' device, so
  the step runs on a CPU.

The official loss gathers keys across ranks (`concat_all_gather`), so the caller needs a
process group: `ensure_process_group()` starts a one-rank gloo group when none exists.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

SOURCES = ("vits.py", "moco/builder.py")
# (file, pattern, replacement, why): the only changes made to the official text.
EDITS = (
    ("vits.py", r"\btimm\.models\.layers\.helpers\b", "timm.layers",
     "timm 1.x moved to_2tuple to timm.layers"),
    ("vits.py", r"\bself\.num_tokens\b", "self.num_prefix_tokens",
     "timm 1.x renamed num_tokens to num_prefix_tokens"),
    ("moco/builder.py", r"\)\.cuda\(\)", ").to(logits.device)",
     "labels on the logits' device instead of CUDA"),
)
PACKAGE = "_moco3_official_code"


@dataclass(frozen=True)
class OfficialCode:
    """The imported official modules and the revision they came from."""

    vits: types.ModuleType
    builder: types.ModuleType
    origin: str


def read_sources(path: Path, rev: str = "HEAD") -> tuple[dict[str, str], str]:
    """{file: text} of the official sources, and a description of where they came from."""
    if all((path / name).is_file() for name in SOURCES):
        return {name: (path / name).read_text() for name in SOURCES}, str(path)
    texts = {}
    for name in SOURCES:
        shown = subprocess.run(["git", "--git-dir", str(path), "show", f"{rev}:{name}"],
                               capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"--official-code {path}: neither a checkout of "
                             f"facebookresearch/moco-v3 (with {' and '.join(SOURCES)}) nor a "
                             f"git directory holding {name} at {rev}.")
        texts[name] = shown.stdout
    commit = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "--short", rev],
                            capture_output=True, text=True).stdout.strip()
    return texts, f"{path} at {commit or rev}"


def apply_edits(texts: dict[str, str]) -> dict[str, str]:
    """The sources with EDITS applied; stops if an edit does not match exactly once."""
    edited = dict(texts)
    for name, pattern, replacement, why in EDITS:
        new, count = re.subn(pattern, replacement, edited[name])
        if count != 1:
            raise SystemExit(f"official code: the edit '{why}' matched {count} times in "
                             f"{name} (expected once); this revision is not the one the "
                             "benchmark knows how to run unchanged otherwise.")
        edited[name] = new
    return edited


def load_official(path: Path, rev: str = "HEAD") -> OfficialCode:
    """Import the official vits and builder modules from `path` (checkout or git dir)."""
    texts, origin = read_sources(Path(path), rev)
    edited = apply_edits(texts)
    folder = Path(tempfile.mkdtemp(prefix="moco3-official-"))
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    modules = {}
    for name in SOURCES:
        module_name = f"{PACKAGE}.{Path(name).stem}"
        file = folder / Path(name).name
        file.write_text(edited[name])
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        with warnings.catch_warnings():  # timm's deprecation notice for the old import path
            warnings.simplefilter("ignore", FutureWarning)
            spec.loader.exec_module(module)
        modules[Path(name).stem] = module
    return OfficialCode(modules["vits"], modules["builder"], origin)


def ensure_process_group() -> None:
    """A one-rank gloo group, for the official loss's all_gather (once per process)."""
    if not torch.distributed.is_initialized():
        with tempfile.NamedTemporaryFile(prefix="moco3-pg-", delete=False) as f:
            init = f"file://{f.name}"
        torch.distributed.init_process_group("gloo", init_method=init, rank=0, world_size=1)


def build_official_model(code: OfficialCode, *, img_size: int, patch_size: int,
                         width: int, depth: int, heads: int, dim: int, mlp_dim: int,
                         tau: float = 0.2) -> nn.Module:
    """The official MoCo_ViT around the official VisionTransformerMoCo, as main_moco.py
    builds it (frozen patch projection, sincos position embedding, 2D head widths)."""
    encoder = partial(code.vits.VisionTransformerMoCo, img_size=img_size,
                      patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
                      mlp_ratio=4, qkv_bias=True, stop_grad_conv1=True,
                      norm_layer=partial(nn.LayerNorm, eps=1e-6))
    with warnings.catch_warnings():  # torch.meshgrid's indexing notice, from vits.py
        warnings.filterwarnings("ignore", message=".*meshgrid.*")
        return code.builder.MoCo_ViT(encoder, dim=dim, mlp_dim=mlp_dim, T=tau)


def official_step(model: nn.Module, opt: torch.optim.Optimizer, x1: torch.Tensor,
                  x2: torch.Tensor, m: float, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """main_moco.py's train step: loss = model(x1, x2, m) under fp16 autocast when `scaler`
    is enabled (as main_moco.py trains on GPUs; a disabled one gives the plain fp32 step),
    backward and AdamW step through the scaler."""
    with torch.autocast(x1.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        loss = model(x1, x2, m)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss
