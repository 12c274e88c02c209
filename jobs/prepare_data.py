#!/usr/bin/env python
"""Stage datasets into HDF5 (and pretrained weights into the cache) for offline compute nodes.

usage: python jobs/prepare_data.py data=NAME [data.mirrors=[DIR]] [paths.data=DIR] [force=true]
       python jobs/prepare_data.py weights=NAME[,NAME...] [paths.cache=DIR]   (or weights=[NAME,...])

Sources are tried in order: an existing prepared file, the local mirror directories (e.g.
Debian's /usr/share/datasets/fashion-mnist), then the real downloader (needs internet).
"""

from __future__ import annotations

from hpclab.launch.cli import group_options, main_guard


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        from hpclab.data.sources import SOURCES
        from hpclab.weights import WEIGHTS

        print(
            __doc__ + f"\ndatasets: {', '.join(sorted(SOURCES))}\ndata configs: {', '.join(group_options('data'))}"
            f"\nweights: {', '.join(sorted(WEIGHTS))}"
        )
        return 0
    from hpclab.config import ConfigError, compose
    from hpclab.data import describe, stage
    from hpclab.weights import stage_weights

    # `weights=resnet18,efficientnet_b0` (the natural spelling) is Hydra sweep syntax: make it a list
    argv = [f"weights=[{a[8:]}]" if a.startswith("weights=") and not a[8:].startswith("[") else a for a in argv]
    wants_data = any(a.startswith(("data=", "data.name=", "experiment=")) for a in argv)
    cfg = compose(argv)
    if not wants_data and not cfg.weights:
        raise ConfigError("name what to stage: data=NAME and/or weights=[NAME,...] (see --help)")
    if wants_data:
        path = stage(cfg, force=cfg.force, repair=True)
        info = describe(path)
        shapes = ", ".join(f"{split} {shape['images']}" for split, shape in info["splits"].items())
        print(f"{path}: {shapes}; source {info['source']}")
    for weight_file in stage_weights(list(cfg.weights), cfg.paths.cache):
        print(f"{weight_file}: staged")
    return 0


if __name__ == "__main__":
    main_guard(main)
