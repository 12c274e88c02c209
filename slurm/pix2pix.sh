#!/bin/bash
# pix2pix colourization of CIFAR-10 horses (configs/experiment/pix2pix_colourize.yaml: the
# colour_unet generator of colourize_unet on the regression task colourize, trained with L1 +
# a conditional PatchGAN, Adam 2e-4, betas 0.5/0.999), and the runs it is compared with.
#
#   sbatch slurm/pix2pix.sh experiment=cifar_cnn              # 1. the classifier of the FD
#   sbatch slurm/pix2pix.sh experiment=colourize_cnn model=colour_unet run_name=colour_unet   # 2. the L2 run
#   sbatch --dependency=afterok:<job 1>:<job 2> slurm/pix2pix.sh   # 3. pix2pix, with the FD and comparison
#   python jobs/analyze.py results/colourize_cnn/colour_unet fd_outputs classifier=results/cifar_cnn/default
#        # (after 1 and 2, before 3: the L2 run's FD, which the comparison table of 3 quotes)
#   sbatch slurm/pix2pix.sh data.classes=null                 # all ten classes (give the L2 run the same)
#   sbatch slurm/pix2pix.sh preset=smoke                      # a quick look
#   HPCLAB_EXPERIMENT=pix2pix_inpaint sbatch slurm/pix2pix.sh # the Fashion-MNIST in-painting study
#   HPCLAB_IMAGE=/shared/hpclab.sif sbatch slurm/pix2pix.sh   # inside the Apptainer image
#
# Stage the data first on a node with internet: python jobs/prepare_data.py data=cifar10
# Results: results/pix2pix_colourize/default/ (figures/compare_test.png, compare_metrics_test.md,
# fd_outputs.md); the log: hpclab-pix2pix_colourize-<jobid>.out here.
# Before the time limit SLURM sends USR2: the run checkpoints and the job requeues itself;
# the restarted job resumes from that checkpoint (also after scontrol requeue or preemption).
#SBATCH --job-name=hpclab-pix2pix_colourize
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
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

hpclab_run "experiment=${HPCLAB_EXPERIMENT:-pix2pix_colourize}" "$@"
