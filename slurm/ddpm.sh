#!/bin/bash
# DDPM at 64 px on Oxford Flowers-102 (configs/experiment/ddpm_flowers.yaml: the U-Net, linear
# noise schedule, EMA and DDIM sampling of experiment=ddpm_fmnist, bf16 on the GPU), on all
# 8,189 images; 500 epochs of batch 128, FID of the final weights at the end.
#
#   sbatch slurm/ddpm.sh                                        # the full experiment
#   sbatch slurm/ddpm.sh train.epochs=100 model.channels=[64,128,256]  # Hydra overrides after the script
#   sbatch slurm/ddpm.sh task.schedule=cosine run_name=cosine   # the cosine noise schedule beside it
#   sbatch --partition=gpu --account=myproj --qos=normal slurm/ddpm.sh
#   sbatch --gpus-per-node=4 --ntasks-per-node=4 slurm/ddpm.sh  # 4 GPUs: one task per GPU
#   HPCLAB_IMAGE=/shared/hpclab.sif sbatch slurm/ddpm.sh        # inside the Apptainer image
#   HPCLAB_EXPERIMENT=ddpm_fmnist sbatch slurm/ddpm.sh          # another experiment, same resources
#
# Stage the data and FID weights first on a node with internet:
#   python jobs/prepare_data.py experiment=ddpm_flowers weights=[fid_inception]
# Results: results/ddpm_flowers/default/ (or run_name=...); the log: hpclab-ddpm_flowers-<jobid>.out here.
# Before the time limit SLURM sends USR2: the run checkpoints and the job requeues itself;
# the restarted job resumes from that checkpoint (also after scontrol requeue or preemption).
#SBATCH --job-name=hpclab-ddpm_flowers
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

hpclab_run "experiment=${HPCLAB_EXPERIMENT:-ddpm_flowers}" "$@"
