#!/bin/bash
# STL-10 autoencoder pretraining on the 100,000 unlabelled 96x96 images
# (configs/experiment/ae_pretrain.yaml: ~200k-parameter conv/transposed-conv AE, MSE).
#
#   sbatch slurm/ae_pretrain.sh                             # the full experiment
#   sbatch slurm/ae_pretrain.sh train.epochs=5              # Hydra overrides after the script
#   sbatch --partition=gpu --account=myproj slurm/ae_pretrain.sh
#   sbatch --gpus-per-node=2 --ntasks-per-node=2 slurm/ae_pretrain.sh   # one task per GPU
#   HPCLAB_IMAGE=/shared/hpclab.sif sbatch slurm/ae_pretrain.sh
#   HPCLAB_EXPERIMENT=stl_ae_classifier_frozen sbatch slurm/ae_pretrain.sh   # the next stage
#
# A small or CPU-only partition (no GPUs): 200 steps on 1,024 images, a quick look:
#   sbatch --gpus-per-node=0 --cpus-per-task=1 --mem=4G --time=30 slurm/ae_pretrain.sh preset=smoke
# Any experiment on the Fashion-MNIST or digits data runs as well (the job stages those itself):
#   sbatch --gpus-per-node=0 --cpus-per-task=1 --mem=4G --time=30 slurm/ae_pretrain.sh experiment=ae_latent preset=smoke
#
# Stage STL-10 first on a node with internet: python jobs/prepare_data.py experiment=ae_pretrain
# Results: results/ae_pretrain/default/; the log, hpclab-ae_pretrain-<jobid>.out here, ends with
# a line "results: <run folder>/".
# Before the time limit SLURM sends USR2: the run checkpoints and the job requeues itself;
# the restarted job resumes from that checkpoint (also after scontrol requeue or preemption).
#SBATCH --job-name=hpclab-ae_pretrain
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --output=%x-%j.out
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

hpclab_run "experiment=${HPCLAB_EXPERIMENT:-ae_pretrain}" "$@"
