#!/bin/bash
# ResNet-18 transfer on STL-10 as one job array (configs/sweep/resnet_transfer.yaml: frozen
# vs fine-tuned x 3 learning rates x 2 label fractions = 12 runs). Array task i runs run i of
# the sweep (the order of: python jobs/launch.py sweep=resnet_transfer dry_run=true).
#
#   sbatch slurm/resnet_transfer.sh                         # all 12 runs, at most 6 at a time
#   sbatch slurm/resnet_transfer.sh train.epochs=3          # Hydra overrides after the script
#   sbatch --array=0-3 slurm/resnet_transfer.sh             # only runs 0..3
#   sbatch --array=0-1 slurm/resnet_transfer.sh sweep=ae_latent preset=smoke   # another sweep:
#        # give it --array=0-(runs-1); extra tasks exit at once, missing runs are named in the log
#   HPCLAB_SWEEP=ae_latent sbatch --array=0-7 slurm/resnet_transfer.sh
#   HPCLAB_IMAGE=/shared/hpclab.sif sbatch slurm/resnet_transfer.sh
#
# A small or CPU-only partition (no GPUs): the smoke sweep, 8 runs of 200 steps, one CPU each:
#   sbatch --gpus-per-node=0 --cpus-per-task=1 --mem=4G --time=30 --array=0-7%2 slurm/resnet_transfer.sh preset=smoke
# or the latent-size study's quick look on Fashion-MNIST, which the tasks stage themselves:
#   sbatch --gpus-per-node=0 --cpus-per-task=1 --mem=4G --time=30 --array=0-1 --job-name=hpclab-ae_latent slurm/resnet_transfer.sh sweep=ae_latent preset=smoke
#
# Stage first on a node with internet: python jobs/prepare_data.py experiment=resnet_transfer weights=[resnet18]
# (datasets that need no download, Fashion-MNIST from Debian's files and the digits, the tasks stage themselves).
# Results: results/resnet_transfer/<run>/ and the table results/resnet_transfer/summary.md
# (refreshed by every finished task; python jobs/report.py results/resnet_transfer rebuilds it).
# State of every task: python jobs/launch.py status sweep=resnet_transfer
# Logs: hpclab-resnet_transfer-<array job>_<task>.out here, each ending with a "results:" line.
#SBATCH --job-name=hpclab-resnet_transfer
#SBATCH --array=0-11%6
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --output=%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --signal=USR2@120
#SBATCH --requeue

# sbatch runs a copy of this file: find the repository from the original's path, scontrol's
# Command= less this job's arguments (which may hold slashes themselves: paths.results=/scratch/x).
hpclab_cmd=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
[ $# -eq 0 ] || hpclab_cmd=${hpclab_cmd% "$*"}
[[ $hpclab_cmd == /* ]] || hpclab_cmd=${SLURM_SUBMIT_DIR:-.}/$hpclab_cmd
[ -f "$(dirname "$hpclab_cmd")/common.sh" ] || hpclab_cmd=$0  # not its batch job: bash slurm/<script> ...
HPCLAB_HOME=${HPCLAB_HOME:-$(cd "$(dirname "$hpclab_cmd")/.." && pwd)}
source "$HPCLAB_HOME/slurm/common.sh"

hpclab_run "sweep=${HPCLAB_SWEEP:-resnet_transfer}" "$@"
