# Shared part of the sbatch scripts in slurm/ (sourced, not run). A script sets its #SBATCH
# header and its default experiment or sweep, then calls:  hpclab_run <default override> "$@"
#
# What it does, in order:
#   1. the job's setup, rendered by `python -m hpclab.launch.batch` (hpclab/launch/batch.py, the
#      same code that sets up the launcher's arrays) and evaluated here: HDF5 without file locks
#      (Lustre/GPFS/NFS), unbuffered Python, the rendezvous address and
#      port of multi-GPU/multi-node runs, absolute data/results/cache folders, and HPCLAB_PY, the
#      command that runs a task: inside the image when HPCLAB_IMAGE is set (apptainer exec --nv,
#      or podman run with HPCLAB_CONTAINER=podman; folders bound at their own paths; checked
#      first), else the Python of the submitting environment;
#   2. a check in the batch shell: the config is composed and validated and the data looked up
#      once, so a bad override fails the job at once with one line and writes nothing;
#   3. one srun step with one task per GPU (the allocation's --ntasks-per-node); each task
#      maps SLURM_PROCID/LOCALID/NTASKS to RANK/LOCAL_RANK/WORLD_SIZE and execs Python, so
#      SLURM's signals (USR2 before the time limit, TERM on requeue/preemption) reach it.
#
# Variables: HPCLAB_IMAGE (a SIF file, or a podman image), HPCLAB_CONTAINER (apptainer, the
# default, singularity or podman), HPCLAB_PYTHON (the Python that renders the setup and, outside
# an image, runs the tasks; default: the active venv's python, else the repository's
# .venv/bin/python, else python3, which needs only its standard library to render),
# HPCLAB_DATA / HPCLAB_RESULTS / HPCLAB_CACHE (default: data, results, data/cache under the
# submit directory), HPCLAB_BINDS (extra comma-separated binds, src[:dst[:ro]]),
# HPCLAB_PRINT_ONLY=1 (print the commands instead of running them).

set -euo pipefail

hpclab_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${HPCLAB_PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then HPCLAB_PYTHON=$VIRTUAL_ENV/bin/python
  elif [ -x "$hpclab_repo/.venv/bin/python" ]; then HPCLAB_PYTHON=$hpclab_repo/.venv/bin/python
  else HPCLAB_PYTHON=python3
  fi
fi
export HPCLAB_PYTHON
hpclab_setup=$(PYTHONPATH="$hpclab_repo${PYTHONPATH:+:$PYTHONPATH}" "$HPCLAB_PYTHON" -m hpclab.launch.batch) || {
  echo "error: $HPCLAB_PYTHON could not render the job's setup (python -m hpclab.launch.batch, above);" \
       "set HPCLAB_PYTHON to a Python 3.10+"
  exit 2
}
eval "$hpclab_setup"

# hpclab_run DEFAULT [OVERRIDES...]: DEFAULT (experiment=... or sweep=...) applies unless the
# overrides choose an experiment or sweep themselves.
hpclab_run() {
  local default=$1; shift
  local arg args=("$default")
  for arg in "$@"; do
    case "$arg" in experiment=*|sweep=*) args=(); break ;; esac
  done
  args+=("$@")
  echo "hpclab: job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-none}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}" \
       "restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
       "${SLURM_NTASKS:-1} task(s), master $MASTER_ADDR:$MASTER_PORT, $(date '+%F %T')"
  local task=(srun --kill-on-bad-exit=1 --cpus-per-task="$SRUN_CPUS_PER_TASK"
              bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"'
              hpclab-task "${HPCLAB_PY[@]}" "${args[@]}")
  if [ "${HPCLAB_PRINT_ONLY:-0}" = 1 ]; then
    echo "check: ${HPCLAB_PY[*]@Q} --check ${args[*]@Q}"
    echo "run: ${task[*]@Q}"
    return 0
  fi
  "${HPCLAB_PY[@]}" --check "${args[@]}"  # fails here, once, on a bad override or missing data
  echo "hpclab: ${task[*]@Q}"
  "${task[@]}"
}
