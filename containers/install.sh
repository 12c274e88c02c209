#!/bin/sh
# The install steps of the hpclab image: the one recipe that both builds run.
#
#   containers/Containerfile (podman/buildah/docker): one RUN per stage, so the layers are
#       system -> deps -> project and a change to the project's code rebuilds only the last;
#   containers/hpclab.def (Apptainer %post): "install.sh all", the same stages in one go.
#
# usage: sh /opt/hpclab/containers/install.sh system|deps|project|all
#
#   system   Debian packages (InfiniBand user-space libraries for NCCL, CA certificates, and
#            python3 + venv where the base has no Python), then the virtual environment
#            /opt/venv. A venv and not the system interpreter: Debian 12's python3 refuses pip
#            installs (PEP 668, "externally-managed-environment"), and --break-system-packages
#            would mix pip's packages with apt's python3-* ones, which verify_lock.py would then
#            (rightly) count as unpinned. The venv is the same on both bases.
#   deps     exactly the pins of constraints.txt (needs only that file, copied before the code);
#   project  the project itself, editable at /opt/hpclab (its configs/ and jobs/ stay next to
#            the package), installed offline (--no-index) against what deps installed, so it
#            cannot download anything; then pip check and the lock check (verify_lock.py):
#            anything installed that differs from constraints.txt fails the build.
#
# Build-time inputs, never part of the image (containers/build.sh binds them for podman and
# buildah; Apptainer's %post has none and downloads everything):
#   /run/hpclab-build/wheels               a wheelhouse kept between builds (downloaded once)
#   /run/hpclab-build/pip-cache            the host's pip cache (locally built wheels, HTTP cache)
#   /run/hpclab-build/ca-certificates.crt  the host's CA bundle, for pip behind a TLS proxy
set -eu

HOME_DIR=/opt/hpclab
VENV=/opt/venv
BUILD_INPUTS=/run/hpclab-build
PY=$VENV/bin/python

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# pip must not read a configuration that the build machine happens to have (find-links,
# extra indexes that exist only there): the image installs from PyPI and the lock alone.
export PIP_CONFIG_FILE=/dev/null
# (Mounted only during the build: the image keeps their empty mount points, not their files.)
mounted() { mountpoint -q "$1" 2>/dev/null; }
if mounted "$BUILD_INPUTS/pip-cache"; then
    export PIP_CACHE_DIR="$BUILD_INPUTS/pip-cache"
else
    export PIP_NO_CACHE_DIR=1  # Apptainer's %post: nothing to share, keep the image small
fi
if mounted "$BUILD_INPUTS/ca-certificates.crt"; then
    export PIP_CERT="$BUILD_INPUTS/ca-certificates.crt"
fi

stage_system() {
    packages="ca-certificates libibverbs1 librdmacm1 ibverbs-providers"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        packages="$packages python3 python3-venv"  # a plain Debian base (debootstrap)
    fi
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $packages
    rm -rf /var/lib/apt/lists/*
    python3 -m venv "$VENV"
    "$PY" -c 'import sys; print("hpclab image: Python", sys.version.split()[0], "in", sys.prefix)'
}

stage_deps() {
    # The lock is the complete closure of -e .[dev] (tests/test_container.py checks it), so
    # installing it is installing the project's dependencies, before the project's code exists.
    lock="$HOME_DIR/constraints.txt"
    if mounted "$BUILD_INPUTS/wheels"; then
        # A wheelhouse shared between builds: download only the files not there yet, then
        # install from it alone. (pip's HTTP cache does not help behind proxies that strip the
        # caching headers, as on the hpclab machines: every build would fetch 3 GB again.)
        "$PY" -m pip download --no-deps --dest "$BUILD_INPUTS/wheels" -r "$lock"
        "$PY" -m pip install --no-index --find-links "$BUILD_INPUTS/wheels" -r "$lock"
    else
        "$PY" -m pip install -r "$lock"
    fi
}

stage_project() {
    cd "$HOME_DIR"
    find . -name __pycache__ -type d -prune -exec rm -rf {} +  # bytecode copied from a checkout
    "$PY" -m pip install --no-index --no-build-isolation -c constraints.txt -e ".[dev]"
    "$PY" -m pip check
    "$PY" containers/verify_lock.py --constraints constraints.txt
    # The image has no SLURM client; its scontrol relays requeue requests (see that file).
    install -m 0755 containers/scontrol-relay /usr/local/bin/scontrol
    mkdir -p /shared/data /shared/results /shared/cache
    labels="${APPTAINER_LABELS:-${SINGULARITY_LABELS:-}}"  # Apptainer's %post only
    if [ -n "$labels" ]; then
        "$PY" -c "import torch; print('org.hpclab.torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())" >> "$labels"
        echo "org.hpclab.constraints.sha256 $(sha256sum constraints.txt | cut -d' ' -f1)" >> "$labels"
    fi
}

run_stage() {
    started=$(date +%s)
    "stage_$1"
    echo "install.sh $1: done in $(( $(date +%s) - started )) s"
}

STAGES="system deps project"
case "${1:-}" in
    system|deps|project) run_stage "$1" ;;
    all) for stage in $STAGES; do run_stage "$stage"; done ;;
    *) echo "usage: $0 system|deps|project|all" >&2; exit 2 ;;
esac
