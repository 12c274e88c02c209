#!/bin/bash
# DCGAN at 256 px on Oxford Flowers-102 (configs/experiment/dcgan.yaml: CHANNEL_NUM=512,
# LATENT_DIM=128, spectrally normalised discriminator, bf16 on the GPU), on the briefs'
# ten-category subset (1,613 images); data=flowers102 trains on all 8,189.
#
#   sbatch slurm/dcgan.sh                                   # the full experiment
#   sbatch slurm/dcgan.sh data=flowers102                   # on every Flowers-102 image
#   sbatch slurm/dcgan.sh train.epochs=5 model.channels=256  # Hydra overrides after the script
#   sbatch --partition=gpu --account=myproj --qos=normal slurm/dcgan.sh
#   sbatch --gpus-per-node=4 --ntasks-per-node=4 slurm/dcgan.sh   # 4 GPUs: one task per GPU
#   HPCLAB_IMAGE=/shared/hpclab.sif sbatch slurm/dcgan.sh   # inside the Apptainer image
#   HPCLAB_EXPERIMENT=dcgan_small sbatch slurm/dcgan.sh     # another experiment, same resources
#
# A small or CPU-only partition (no GPUs): the 32 px Fashion-MNIST DCGAN for 200 steps, a few minutes:
#   sbatch --gpus-per-node=0 --cpus-per-task=1 --mem=4G --time=30 slurm/dcgan.sh experiment=dcgan_fmnist preset=smoke analysis=[gan_curves,gan_epoch_grids]
#
# Data: the job stages the datasets that need no download itself (Fashion-MNIST from Debian's
# dataset-fashion-mnist files or data.mirrors, scikit-learn's digits); stage the others first on a
# node with internet: python jobs/prepare_data.py experiment=dcgan
# Results: results/dcgan/default/ (or run_name=...); the log, hpclab-dcgan-<jobid>.out here, ends
# with a line "results: <run folder>/".
# Before the time limit SLURM sends USR2: the run checkpoints and the job requeues itself;
# the restarted job resumes from that checkpoint (also after scontrol requeue or preemption).
#SBATCH --job-name=hpclab-dcgan
#SBATCH --time=04:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR2@180
#SBATCH --requeue

# sbatch runs a copy of this file: find the repository from the original's path, scontrol's
# Command= less this job's arguments (which may hold slashes themselves: paths.results=/scratch/x).
hpclab_cmd=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
[ $# -eq 0 ] || hpclab_cmd=${hpclab_cmd% "$*"}
[[ $hpclab_cmd == /* ]] || hpclab_cmd=${SLURM_SUBMIT_DIR:-.}/$hpclab_cmd
[ -f "$(dirname "$hpclab_cmd")/common.sh" ] || hpclab_cmd=$0  # not its batch job: bash slurm/<script> ...
HPCLAB_HOME=${HPCLAB_HOME:-$(cd "$(dirname "$hpclab_cmd")/.." && pwd)}
source "$HPCLAB_HOME/slurm/common.sh"

hpclab_run "experiment=${HPCLAB_EXPERIMENT:-dcgan}" "$@"
