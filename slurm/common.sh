# Shared part of the sbatch scripts in slurm/ (sourced, not run). A script sets its #SBATCH
# header and its default experiment or sweep, then calls:  hpclab_run <default override> "$@"
#
# What it does, in order:
#   1. environment: HDF5 without file locks (Lustre/GPFS/NFS), threads = CPUs per task,
#      unbuffered Python, the rendezvous address and port for multi-GPU/multi-node runs;
#   2. the Python to use: inside the image when HPCLAB_IMAGE is set (apptainer exec --nv, or
#      podman run with HPCLAB_CONTAINER=podman; data/results/cache bound at their own paths),
#      else `python` of the submitting environment (sbatch exports it; activate your venv);
#   3. a check in the batch shell: the config is composed and validated and the data looked up
#      once, so a bad override fails the job at once with one line and writes nothing;
#   4. one srun step with one task per GPU (the allocation's --ntasks-per-node); each task
#      maps SLURM_PROCID/LOCALID/NTASKS to RANK/LOCAL_RANK/WORLD_SIZE and execs Python, so
#      SLURM's signals (USR2 before the time limit, TERM on requeue/preemption) reach it.
#
# Variables: HPCLAB_IMAGE (a SIF file, or a podman image), HPCLAB_CONTAINER (apptainer, the
# default, singularity or podman), HPCLAB_PYTHON (outside an image; default: the active venv's
# python, else the repository's .venv/bin/python, else python),
# HPCLAB_DATA / HPCLAB_RESULTS / HPCLAB_CACHE (default: data, results, data/cache under the
# submit directory), HPCLAB_BINDS (extra comma-separated binds, src[:dst[:ro]]),
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

# Rendezvous: the first node of the allocation at the address SLURM reaches it (its NodeAddr:
# the node name on most clusters, an IP where names do not resolve, as on the emulated nodes of
# scripts/local_slurm.sh), a port derived from the job id (array tasks have distinct job ids,
# so concurrent tasks never collide). hpclab/launch/slurm.py first_node() agrees.
export MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" 2>/dev/null | head -n 1)
export MASTER_ADDR=${MASTER_ADDR:-$(hostname)}
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  hpclab_addr=$(scontrol show node -o "$MASTER_ADDR" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=\(..*\)/\1/p' | head -n 1) || true
  if [ -n "$hpclab_addr" ]; then export MASTER_ADDR=$hpclab_addr; fi
fi
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

HPCLAB_EXEC=()  # the command prefix that runs Python: empty, or the container engine ... IMAGE
hpclab_fail() { echo "error: $*"; exit 2; }
if [ -n "${HPCLAB_IMAGE:-}" ]; then
  # The same command as hpclab/launch/container.py (exec_prefix; a parity test holds them equal).
  engine=${HPCLAB_CONTAINER:-apptainer}
  if [ "$engine" = apptainer ] && ! command -v apptainer >/dev/null && command -v singularity >/dev/null; then
    engine=singularity  # SingularityCE >= 4 runs the same images and options
  fi
  case "$engine" in
    apptainer|singularity|podman) ;;
    *) hpclab_fail "HPCLAB_CONTAINER=$engine is not one of apptainer, singularity, podman" ;;
  esac
  if [ "$engine" != podman ] && [ ! -f "$HPCLAB_IMAGE" ]; then
    hpclab_fail "HPCLAB_IMAGE=$HPCLAB_IMAGE is not a file (build it: containers/build.sh; a podman image needs HPCLAB_CONTAINER=podman)"
  fi
  if [ "${HPCLAB_PRINT_ONLY:-0}" != 1 ]; then  # printing the commands needs no engine
    command -v "$engine" >/dev/null || hpclab_fail "$engine not found on PATH on $(hostname): load or install it" \
      "(e.g. module load apptainer; apt-get install podman runc), or choose another HPCLAB_CONTAINER"
    if [ "$engine" = podman ] && ! podman image exists "$HPCLAB_IMAGE"; then
      hpclab_fail "podman on $(hostname) has no image $HPCLAB_IMAGE (build it: containers/build.sh --engine podman; list: podman images)"
    fi
  fi
  # Bind sources must exist: the three folders are created (a missing data folder then fails
  # in the suite's own check, naming the dataset and prepare_data), extra binds are checked.
  mkdir -p "$HPCLAB_DATA" "$HPCLAB_RESULTS" "$HPCLAB_CACHE"
  binds=()  # the three folders, less one inside another (the cache, by default, is inside data)
  for dir in "$HPCLAB_DATA" "$HPCLAB_RESULTS" "$HPCLAB_CACHE"; do
    if [[ "$dir" == "$HPCLAB_DATA" || "$dir" == "$HPCLAB_RESULTS" ||
          ( "$dir" != "$HPCLAB_DATA"/* && "$dir" != "$HPCLAB_RESULTS"/* ) ]]; then
      binds+=("$dir")
    fi
  done
  IFS=, read -r -a extra_binds <<<"${HPCLAB_BINDS:-}"
  for bind in "${extra_binds[@]}"; do
    [ -n "$bind" ] || continue
    [ -e "${bind%%:*}" ] || hpclab_fail "HPCLAB_BINDS: bind source ${bind%%:*} does not exist (create it, or remove '$bind' from HPCLAB_BINDS)"
    binds+=("$bind")
  done
  env=("HPCLAB_DATA=$HPCLAB_DATA" "HPCLAB_RESULTS=$HPCLAB_RESULTS" "HPCLAB_CACHE=$HPCLAB_CACHE"
       "TORCH_HOME=$HPCLAB_CACHE" "HF_HOME=$HPCLAB_CACHE/huggingface"
       "HPCLAB_CONTAINER_ENGINE=$engine" "HPCLAB_CONTAINER_IMAGE=$HPCLAB_IMAGE")
  if [ "$engine" = podman ]; then
    # the host's network, IPC and process space, as Apptainer has them; GPUs through CDI
    # podman runs as the task's own process, its pid passed for the image's entry point
    HPCLAB_EXEC=(sh -c 'export HPCLAB_PARENT_PID=$$; exec "$@"' hpclab-task podman run --rm --network=host --ipc=host --pid=host)
    [ "${SLURM_GPUS_ON_NODE:-0}" != 0 ] && HPCLAB_EXEC+=(--device nvidia.com/gpu=all)
    for bind in "${binds[@]}"; do
      if [[ "$bind" == *:* ]]; then HPCLAB_EXEC+=(--volume "$bind"); else HPCLAB_EXEC+=(--volume "$bind:$bind"); fi
    done
    for var in "${env[@]}"; do HPCLAB_EXEC+=(--env "$var"); done
    # podman passes no host variable but these (container.py PODMAN_PASS)
    for name in 'SLURM_*' 'SUBMITIT_*' 'NCCL_*' 'ACCELERATE_*' CUDA_VISIBLE_DEVICES RANK LOCAL_RANK WORLD_SIZE \
                MASTER_ADDR MASTER_PORT OMP_NUM_THREADS HDF5_USE_FILE_LOCKING HPCLAB_REQUEUE_FILE HPCLAB_SLURM_LOG \
                HPCLAB_PARENT_PID; do
      HPCLAB_EXEC+=(--env "$name")
    done
    HPCLAB_EXEC+=(--label "hpclab.slurm_job=${SLURM_JOB_ID:-}" "$HPCLAB_IMAGE")
  else
    HPCLAB_EXEC=("$engine" exec)
    [ "${SLURM_GPUS_ON_NODE:-0}" != 0 ] && HPCLAB_EXEC+=(--nv)
    for bind in "${binds[@]}"; do HPCLAB_EXEC+=(--bind "$bind"); done
    for var in "${env[@]}"; do HPCLAB_EXEC+=(--env "$var"); done
    # Apptainer passes the whole host environment: keep the host's Python settings out.
    HPCLAB_EXEC+=(--env "PYTHONPATH=" --env "PYTHONHOME=" "$HPCLAB_IMAGE")
  fi
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
  if [ "$engine" = podman ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${HPCLAB_PRINT_ONLY:-0}" != 1 ]; then
    # a container of an earlier start of this job that outlived its task (see container.py)
    podman ps -aq --filter "label=hpclab.slurm_job=$SLURM_JOB_ID" | xargs -r podman rm -f
  fi
fi
# Python: inside the image, the image's; else HPCLAB_PYTHON, else the active virtual
# environment's, else the repository's .venv (scripts/setup.sh), else python on PATH.
if [ ${#HPCLAB_EXEC[@]} -gt 0 ]; then
  HPCLAB_PYTHON=python
elif [ -z "${HPCLAB_PYTHON:-}" ]; then
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
