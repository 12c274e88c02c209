#!/usr/bin/env bash
# One-step setup of a development or workstation machine.
#   bash scripts/setup.sh               pinned Python packages (+ Debian's Fashion-MNIST when root)
#   bash scripts/setup.sh --with-slurm  also SLURM + munge, for the real-SLURM tests
# On a cluster, use the Apptainer image instead (containers/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(dataset-fashion-mnist)
[ "${1:-}" = "--with-slurm" ] && debs+=(slurmctld slurmd slurm-client munge)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
else
  echo "setup: not root on Debian/Ubuntu; skipping system packages (${debs[*]})" >&2
fi

python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
python3 -c "import hpclab, torch, torchvision; print(f'hpclab {hpclab.__version__} ready: torch {torch.__version__}, torchvision {torchvision.__version__}')"
