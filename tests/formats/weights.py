"""Stand-in pretrained weight files in torch.hub's cache layout (``<cache>/hub/checkpoints/``).

A stand-in is a real ``torch.save``d state dict of the right architecture with random values.
Its file name cannot carry the sha256 prefix of the real download, so tests register it as a
site-local entry of its own (``<name>_standin``, with the prefix of the file actually written)
through a JSON manifest named by ``$HPCLAB_WEIGHTS_MANIFEST``: the loading code, the checksum
check and the offline path are the production ones, and the shipped entries stay untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def standin_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the torchvision model ``arch`` (what its real weight file holds)."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None).state_dict()


def write_standin(cache: Path, arch: str = "resnet18", seed: int = 0, source_dir: Path | None = None) -> dict[str, str]:
    """Save a stand-in for ``arch`` and return its WeightFile fields (name ``<arch>_standin``).

    With ``source_dir`` the file is written there instead (a "download server" for testing
    ``stage_weights``: the entry's url is a file:// URL) and the cache is left empty."""
    target_dir = Path(source_dir) if source_dir else Path(cache) / "hub" / "checkpoints"
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".{arch}-standin.tmp"
    torch.save(standin_state_dict(arch, seed), tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    final = target_dir / f"{arch}-{prefix}.pth"
    tmp.replace(final)
    return {
        "name": f"{arch}_standin",
        "url": final.resolve().as_uri(),
        "filename": final.name,
        "sha256_prefix": prefix,
        "note": f"random stand-in for {arch} (tests)",
    }


def write_manifest(path: Path, entries: list[dict[str, str]]) -> Path:
    """The JSON list that ``$HPCLAB_WEIGHTS_MANIFEST`` points at."""
    path.write_text(json.dumps(entries, indent=1))
    return path
