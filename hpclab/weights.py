"""Pretrained weights staged once into a shared cache, then loaded offline on compute nodes.

The cache follows torch.hub's layout (``$TORCH_HOME/hub/checkpoints/<file>``), so torchvision
and pytorch-fid find staged files where they would have downloaded them. Each file name
carries the first hex digits of its sha256 (torch.hub's convention), checked on staging and
on loading.

Sites (and tests, with stand-in files) can add entries of their own through a JSON manifest
named by ``$HPCLAB_WEIGHTS_MANIFEST``; those get the same checks and cannot replace a shipped
entry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hpclab.errors import WeightsMissing
from hpclab.registry import Registry
from hpclab.utils import sha256_of

log = logging.getLogger("hpclab")


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    filename: str
    sha256_prefix: str  # torch.hub convention: the hex digits after the last '-' in the name
    note: str = ""


WEIGHTS = Registry("weights")


def register_weights(entry: WeightFile, replace: bool = False) -> WeightFile:
    """Add ``entry`` under its own name."""
    return WEIGHTS.add(entry.name, entry, replace)


register_weights(
    WeightFile(
        "fid_inception",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "pt_inception-2015-12-05-6726825d.pth",
        "6726825d",
        "pytorch-fid's Inception-v3 (FID statistics)",
    )
)

# torchvision's ImageNet-1K classification weights; the entry name is the torchvision model
# name, so ``models.get_model(name)`` builds the matching architecture.
for _name, _file, _note in (
    ("resnet18", "resnet18-f37072fd.pth", "ResNet-18 IMAGENET1K_V1 (69.8% top-1)"),
    ("resnet50", "resnet50-0676ba61.pth", "ResNet-50 IMAGENET1K_V1 (76.1% top-1)"),
    ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", "EfficientNet-B0 IMAGENET1K_V1 (77.7% top-1)"),
    ("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth", "MobileNetV3-Large IMAGENET1K_V1 (74.0% top-1)"),
    ("convnext_tiny", "convnext_tiny-983f1562.pth", "ConvNeXt-Tiny IMAGENET1K_V1 (82.5% top-1)"),
):
    register_weights(
        WeightFile(
            _name, f"https://download.pytorch.org/models/{_file}", _file, _file.rsplit("-", 1)[1].split(".")[0], _note
        )
    )

MANIFEST_ENV = "HPCLAB_WEIGHTS_MANIFEST"
SHIPPED = frozenset(WEIGHTS)  # entries whose checks a manifest may not replace


def load_manifest(path: str | Path) -> list[WeightFile]:
    """Register site-local weight files from a JSON list of WeightFile fields (e.g. an in-house
    checkpoint, or a test's stand-in). They get the same sha256 check; they cannot replace a
    shipped entry, so a manifest can never weaken the check of a known download."""
    import json

    try:
        records = json.loads(Path(path).read_text())
        entries = [WeightFile(**record) for record in records]
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsMissing(f"weights manifest {path} (${MANIFEST_ENV}) is unreadable: {exc}") from None
    for entry in entries:
        if entry.name in SHIPPED and WEIGHTS[entry.name] != entry:
            raise WeightsMissing(
                f"weights manifest {path}: '{entry.name}' would replace a shipped entry; use another name"
            )
        register_weights(entry, replace=True)  # reading a manifest again updates its entries
    return entries


if os.environ.get(MANIFEST_ENV):
    load_manifest(os.environ[MANIFEST_ENV])


def cache_dir(cache: str | Path | None = None) -> Path:
    """The torch.hub checkpoint folder inside the cache (``paths.cache`` or $TORCH_HOME)."""
    root = Path(cache) if cache else Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return root / "hub" / "checkpoints"


def use_cache(cache: str | Path) -> None:
    """Point torch.hub / torchvision / timm at the staged cache for this process."""
    os.environ["TORCH_HOME"] = str(Path(cache).resolve())
    os.environ.setdefault("HF_HOME", str(Path(cache).resolve() / "huggingface"))


def weight_path(name: str, cache: str | Path | None = None, verify: bool = True) -> Path:
    """The staged file of ``name``; a clear error naming the staging command otherwise."""
    entry = WEIGHTS[name]
    path = cache_dir(cache) / entry.filename
    fix = (
        f"run on a node with internet: python jobs/prepare_data.py weights=[{name}] "
        f"paths.cache={cache or '$TORCH_HOME'}"
    )
    if not path.is_file():
        raise WeightsMissing(f"pretrained weights '{name}' not staged ({path} missing); {fix}")
    if verify and not sha256_of(path).startswith(entry.sha256_prefix):
        raise WeightsMissing(
            f"pretrained weights '{name}' at {path} fail their sha256 check (corrupt or partial); {fix}"
        )
    return path


def load_state_dict(name: str, cache: str | Path | None = None) -> dict:
    """The verified state dict of ``name``, loaded without executing pickled code."""
    import torch

    path = weight_path(name, cache)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle opcodes
        raise WeightsMissing(
            f"pretrained weights '{name}' at {path} are unreadable ({type(exc).__name__}); "
            f"re-stage them: python jobs/prepare_data.py weights=[{name}] paths.cache={cache or '$TORCH_HOME'}"
        ) from None
    if not isinstance(state, dict):
        raise WeightsMissing(f"pretrained weights '{name}' at {path} hold a {type(state).__name__}, not a state dict")
    return state


def stage_weights(names: list[str], cache: str | Path) -> list[Path]:
    """Download (torch.hub, which checks the hash prefix) any of ``names`` not yet staged."""
    from torch.hub import download_url_to_file

    paths = []
    for name in names:
        try:
            paths.append(weight_path(name, cache))
            log.info("weights %s already staged", name)
            continue
        except WeightsMissing:
            pass
        entry = WEIGHTS[name]
        dest = cache_dir(cache) / entry.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s -> %s", entry.url, dest)
        try:
            download_url_to_file(entry.url, str(dest), hash_prefix=entry.sha256_prefix, progress=False)
        except (OSError, RuntimeError) as exc:  # no network, HTTP error, hash mismatch
            raise WeightsMissing(
                f"download of weights '{name}' from {entry.url} failed ({exc}); "
                f"stage them on a node with internet, or copy {entry.filename} into {dest.parent}"
            ) from None
        paths.append(weight_path(name, cache))
    return paths
