#!/bin/sh
# What the hpclab image runs (Apptainer's %runscript, the OCI image's ENTRYPOINT):
#
#   IMAGE launch|prepare_data|report|run|analyze ARGS     jobs/<name>.py ARGS
#   IMAGE key=value ... | IMAGE status ... | IMAGE --help  jobs/launch.py ARGS
#   IMAGE selftest                                         containers/selftest.sh (Apptainer's %test)
#   IMAGE python ... | IMAGE bash | IMAGE COMMAND ...      that command, so that "podman run IMAGE
#                                                          python -m ..." works as "apptainer exec"
#   IMAGE                                                  jobs/launch.py --help
#
# SLURM tasks under podman (hpclab/launch/container.py) set HPCLAB_PARENT_PID to the pid of
# their `podman run` process (the image shares the host's process space). The container's
# processes are children of conmon, not of that task, so when SLURM kills the task (requeue,
# preemption, scancel: SIGTERM, and often SIGKILL right after) podman may not get to pass the
# SIGTERM on and nothing would stop the run. Here the command then runs as a child: signals
# that podman passes on are relayed to it, and once the task's podman process is gone it gets
# SIGTERM itself: the engine checkpoints and exits, so no copy of the run outlives its task.
set -eu
jobs="${HPCLAB_HOME:-/opt/hpclab}/jobs"

supervise() {
    "$@" &
    child=$!
    for sig in TERM INT HUP USR1 USR2; do
        # shellcheck disable=SC2064
        trap "kill -$sig $child 2>/dev/null || true" "$sig"
    done
    parent="$HPCLAB_PARENT_PID"
    while kill -0 "$child" 2>/dev/null; do
        if [ -n "$parent" ] && ! kill -0 "$parent" 2>/dev/null; then
            echo "hpclab: the task's podman process ($parent) is gone: stopping the run (SIGTERM)" >&2
            kill -TERM "$child" 2>/dev/null || true
            parent=""
        fi
        sleep 1 &
        wait $! 2>/dev/null || true
    done
    status=0
    wait "$child" || status=$?
    exit "$status"
}

run() {
    if [ -n "${HPCLAB_PARENT_PID:-}" ]; then supervise "$@"; else exec "$@"; fi
}

case "${1:-}" in
    "") exec python "$jobs/launch.py" --help ;;
    launch|prepare_data|report|run|analyze|activations|compare_runs|make_phantoms)
        script="$1"; shift; run python "$jobs/$script.py" "$@" ;;
    selftest) exec sh "${HPCLAB_HOME:-/opt/hpclab}/containers/selftest.sh" ;;
    status|-*|*=*) run python "$jobs/launch.py" "$@" ;;
    *) run "$@" ;;
esac
