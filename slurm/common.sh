# Shared part of the sbatch scripts in slurm/ (sourced, not run). A script sets its #SBATCH
# header and its default experiment or sweep, then calls:  hpclab_run <default override> "$@"
#
# What it does, in order:
#   1. environment: HDF5 without file locks (Lustre/GPFS/NFS), threads = CPUs per task,
#      unbuffered Python, the rendezvous address and port for multi-GPU/multi-node runs;
#   2. the Python to use: inside the Apptainer image when HPCLAB_IMAGE is set (apptainer exec
#      --nv, data/results/cache bound at their own paths), else `python` of the submitting
#      environment (sbatch exports it; activate your venv before sbatch);
#   3. a check in the batch shell: the config is composed and validated and the data looked up
#      once, so a bad override fails the job at once with one line and writes nothing;
#   4. one srun step with one task per GPU (the allocation's --ntasks-per-node); each task
#      maps SLURM_PROCID/LOCALID/NTASKS to RANK/LOCAL_RANK/WORLD_SIZE and execs Python, so
#      SLURM's signals (USR2 before the time limit, TERM on requeue/preemption) reach it.
#
# Variables: HPCLAB_IMAGE (Apptainer image), HPCLAB_PYTHON (default: the active venv's
# python, else the repository's .venv/bin/python, else python),
# HPCLAB_DATA / HPCLAB_RESULTS / HPCLAB_CACHE (default: data, results, data/cache under the
# submit directory), HPCLAB_BINDS (extra comma-separated apptainer binds),
# HPCLAB_PRINT_ONLY=1 (print the commands instead of running them).

set -euo pipefail

export HDF5_USE_FILE_LOCKING=FALSE
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
# Several tasks and no GPU: data parallel with gloo on the CPU (as `accelerate launch --cpu`).
if [ "${SLURM_GPUS_ON_NODE:-0}" = 0 ] && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then export ACCELERATE_USE_CPU=true; fi
# From SLURM 22.05 srun no longer inherits --cpus-per-task from sbatch; pass it on explicitly.
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}

# One task per GPU: warn when the allocation has more GPUs per node than tasks (idle GPUs).
tasks_per_node=$(( ${SLURM_NTASKS:-1} / ${SLURM_NNODES:-1} ))
if [ "${SLURM_GPUS_ON_NODE:-0}" -gt "$tasks_per_node" ]; then
  echo "hpclab: warning: $SLURM_GPUS_ON_NODE GPUs per node but $tasks_per_node task(s) per node;" \
       "submit with --ntasks-per-node=$SLURM_GPUS_ON_NODE to use them all"
fi

# Rendezvous: the first node of the allocation, a port derived from the job id (array tasks
# have distinct job ids, so concurrent tasks never collide; hpclab/launch/slurm.py agrees).
export MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" 2>/dev/null | head -n 1)
export MASTER_ADDR=${MASTER_ADDR:-$(hostname)}
export MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
# Where SLURM writes this job's log (recorded in results/<group>/<run>/slurm.json).
if [ -n "${SLURM_JOB_ID:-}" ]; then
  job_ref=$SLURM_JOB_ID  # an array's first task shares its id with the whole array: name the task
  [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && job_ref=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
  HPCLAB_SLURM_LOG=$(scontrol show job -o "$job_ref" 2>/dev/null | tr ' ' '\n' | sed -n 's/^StdOut=//p' | head -n 1) || true
  export HPCLAB_SLURM_LOG
fi

export HPCLAB_DATA=$(realpath -m "${HPCLAB_DATA:-data}")
export HPCLAB_RESULTS=$(realpath -m "${HPCLAB_RESULTS:-results}")
export HPCLAB_CACHE=$(realpath -m "${HPCLAB_CACHE:-$HPCLAB_DATA/cache}")

HPCLAB_EXEC=()  # the command prefix that runs Python: empty, or apptainer exec ... IMAGE
if [ -n "${HPCLAB_IMAGE:-}" ]; then
  [ -f "$HPCLAB_IMAGE" ] || { echo "error: HPCLAB_IMAGE=$HPCLAB_IMAGE is not a file (build it: containers/build.sh)"; exit 2; }
  mkdir -p "$HPCLAB_RESULTS" "$HPCLAB_CACHE"
  HPCLAB_EXEC=(apptainer exec)
  [ "${SLURM_GPUS_ON_NODE:-0}" != 0 ] && HPCLAB_EXEC+=(--nv)
  # the same binds as hpclab/launch/container.py (exec_prefix; a parity test holds them equal):
  # the three folders, less one inside another (the cache, by default, is inside data)
  for dir in "$HPCLAB_DATA" "$HPCLAB_RESULTS" "$HPCLAB_CACHE"; do
    if [[ "$dir" == "$HPCLAB_DATA" || "$dir" == "$HPCLAB_RESULTS" ||
          ( "$dir" != "$HPCLAB_DATA"/* && "$dir" != "$HPCLAB_RESULTS"/* ) ]]; then
      HPCLAB_EXEC+=(--bind "$dir")
    fi
  done
  IFS=, read -r -a extra_binds <<<"${HPCLAB_BINDS:-}"
  for bind in "${extra_binds[@]}"; do [ -n "$bind" ] && HPCLAB_EXEC+=(--bind "$bind"); done
  HPCLAB_EXEC+=(--env "HPCLAB_DATA=$HPCLAB_DATA" --env "HPCLAB_RESULTS=$HPCLAB_RESULTS"
                --env "HPCLAB_CACHE=$HPCLAB_CACHE" --env "TORCH_HOME=$HPCLAB_CACHE"
                --env "HF_HOME=$HPCLAB_CACHE/huggingface" "$HPCLAB_IMAGE")
  # The image has no SLURM client: its `scontrol requeue` (after the checkpoint on USR2) writes
  # the request to this file and the batch shell runs the real scontrol when the step ends.
  export HPCLAB_REQUEUE_FILE="$HPCLAB_RESULTS/.requeue-${SLURM_JOB_ID:-none}"
  rm -f "$HPCLAB_REQUEUE_FILE"
  hpclab_requeue_relay() {
    if [ -s "$HPCLAB_REQUEUE_FILE" ]; then
      local job; job=$(cat "$HPCLAB_REQUEUE_FILE"); rm -f "$HPCLAB_REQUEUE_FILE"
      echo "hpclab: requeueing $job (requested inside the container)"
      scontrol requeue "$job"
    fi
  }
  trap hpclab_requeue_relay EXIT
fi
# Python outside the image: HPCLAB_PYTHON, else the active virtual environment's, else the
# repository's .venv (scripts/setup.sh), else python on PATH.
if [ -z "${HPCLAB_PYTHON:-}" ] && [ ${#HPCLAB_EXEC[@]} -eq 0 ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then HPCLAB_PYTHON=$VIRTUAL_ENV/bin/python
  else
    hpclab_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -x "$hpclab_repo/.venv/bin/python" ]; then HPCLAB_PYTHON=$hpclab_repo/.venv/bin/python; fi
  fi
fi
HPCLAB_PY=("${HPCLAB_EXEC[@]}" "${HPCLAB_PYTHON:-python}" -m hpclab.launch.task)

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
