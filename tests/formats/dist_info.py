"""Installed-distribution records as pip writes them: <name>-<version>.dist-info/METADATA."""

from __future__ import annotations

from pathlib import Path


def write_dist_info(site: Path, name: str, version: str) -> Path:
    """Write the METADATA file that importlib.metadata reads for an installed distribution."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (folder / "INSTALLER").write_text("pip\n")
    return folder
