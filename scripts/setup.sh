#!/usr/bin/env bash
# One-step setup of a development or workstation machine.
#   bash scripts/setup.sh               pinned Python packages in a virtual environment
#                                       (+ Debian's Fashion-MNIST when root)
#   bash scripts/setup.sh --with-slurm  also SLURM + munge, for the real-SLURM tests
#
# Python packages go into the active virtual environment or conda environment if there is one,
# else into $HPCLAB_VENV (default: .venv at the repository root), created with `python3 -m venv`
# (another interpreter: PYTHON=/path/to/python3.11). Debian 12 and Ubuntu 23.04+ refuse pip
# installs into the system interpreter (PEP 668), so the system Python is never written to.
# A second run with the same lock is a no-op (a stamp in the environment records what was
# installed). On a cluster, use the container image instead (docs/containers.md).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

with_slurm=0
for arg in "$@"; do
  case "$arg" in
    --with-slurm) with_slurm=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$arg' (expected --with-slurm or --help)" ;;
  esac
done

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "'$python' not found; install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$python" -V 2>&1) is too old; hpclab needs Python 3.10+ (set PYTHON=/path/to/python3.x)"

# System packages: Debian's Fashion-MNIST (the main job's data), SLURM for the tests, and the
# venv module where the interpreter lacks it (Debian splits it into python3-venv).
debs=(dataset-fashion-mnist)
[ "$with_slurm" = 1 ] && debs+=(slurmctld slurmd slurm-client munge)
if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  debs+=("python3-venv")
fi
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'ok installed' || missing+=("$deb")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root on Debian/Ubuntu, skipped the system packages ${missing[*]};" \
         "install them with: sudo apt-get install ${missing[*]}" >&2
  fi
fi

# The Python environment: the active one, else our own virtual environment.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  env_python="$VIRTUAL_ENV/bin/python"; where="active virtual environment $VIRTUAL_ENV"
elif [ -n "${CONDA_PREFIX:-}" ]; then
  env_python="$CONDA_PREFIX/bin/python"; where="active conda environment $CONDA_PREFIX"
else
  venv=${HPCLAB_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pip' 2>/dev/null; then
    "$python" -m venv "$venv" \
      || die "could not create the virtual environment $venv with $python (Debian/Ubuntu: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  fi
  env_python="$(cd "$venv" && pwd)/bin/python"; where="virtual environment $venv"
fi

# Install the exact lock, unless this environment already holds it.
stamp="$("$env_python" -c 'import sys; print(sys.prefix)')/.hpclab-setup"
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1) $(pwd)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$env_python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
"$env_python" -c "import hpclab, torch, torchvision; print(f'hpclab {hpclab.__version__} ready in the $where: torch {torch.__version__}, torchvision {torchvision.__version__}')"
