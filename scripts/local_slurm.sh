#!/usr/bin/env bash
# A SLURM cluster on localhost for development and CI (Debian's SLURM 22.05, no systemd): one
# node, or N emulated nodes side by side (one slurmd each) to run multi-node jobs on one machine.
#
#   scripts/local_slurm.sh start [--nodes N]     # write slurm.conf, start munged, slurmctld, slurmd(s); wait until idle
#   scripts/local_slurm.sh status                # daemons, nodes, sinfo and squeue
#   scripts/local_slurm.sh stop                  # stop the daemons this script started (by their pid files)
#   scripts/local_slurm.sh restart [--nodes N]
#   scripts/local_slurm.sh conf [--nodes N]      # print the slurm.conf that start would write (no root needed)
#
# Needs root and the Debian packages `slurmctld slurmd slurm-client munge`; `start` installs them
# with apt-get when they are missing. Starting twice is fine: running daemons are left alone.
# It refuses to overwrite a slurm.conf it did not write (set HPCLAB_SLURM_FORCE=1 to allow it).
#
# The cluster. --nodes 1 (the default for a new cluster; without --nodes a cluster this script
# configured keeps its node count): node $(hostname -s) with all its CPUs and 90% of its memory.
# --nodes N > 1: nodes n1..nN on this host, reached at NodeAddr 127.0.0.1 on ports 17001..
# (HPCLAB_SLURMD_PORT), each with all the CPUs (the nodes share the cores: more tasks at once,
# each slower, never wrong) and 90%/N of the memory (never overcommitted). Partitions `debug`
# (default; its jobs can be preempted by requeue) and `urgent` (preempts `debug`) hold every
# node; no GPUs, no accounting (sacct is absent; job state comes from squeue), quick scheduling
# and short kill waits. A changed node count restarts the daemons: queued jobs are kept, jobs
# running on nodes that no longer exist are lost.
#
# A second, separate cluster beside the machine's own (a development instance): put all its
# files under one folder, give it its own name and ports, and point the clients at its slurm.conf:
#   export HPCLAB_SLURM_ROOT=/tmp/hpclab-slurm-dev HPCLAB_SLURM_NAME=hpclabdev \
#          HPCLAB_SLURMCTLD_PORT=17817 HPCLAB_SLURMD_PORT=17101
#   scripts/local_slurm.sh start --nodes 2 && export SLURM_CONF=$HPCLAB_SLURM_ROOT/etc/slurm.conf
# munged is shared (started only when none runs, stopped only by the instance that started it).
# Also: HPCLAB_SLURM_MAX_ARRAY_SIZE (MaxArraySize, default 1001 as in SLURM), HPCLAB_SLURM_MAX_JOB_COUNT
# (MaxJobCount, SLURM's default 10000), HPCLAB_SLURM_FIRST_JOB_ID (FirstJobId: a second instance on
# the same machine counts from elsewhere, so its jobs' rendezvous ports, 20000 + job id, differ).
set -euo pipefail

ROOT=${HPCLAB_SLURM_ROOT:-}
if [ -n "$ROOT" ]; then
  CONF_DIR=${SLURM_CONF_DIR:-$ROOT/etc}
  STATE=$ROOT/state SPOOL=$ROOT/spool LOGS=$ROOT/log RUN=$ROOT/run
else
  CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
  STATE=/var/spool/slurmctld
  SPOOL=/var/spool/slurmd
  LOGS=/var/log/slurm
  RUN=/run/hpclab-slurm            # pid files of the daemons started here
fi
CONF=$CONF_DIR/slurm.conf
export SLURM_CONF=$CONF            # what the daemons and the clients run here read
CLUSTER_NAME=${HPCLAB_SLURM_NAME:-hpclab}
CTLD_PORT=${HPCLAB_SLURMCTLD_PORT:-}   # empty: SLURM's default, 6817
SLURMD_PORT=${HPCLAB_SLURMD_PORT:-}    # empty: 6818 for one node, 17001.. for several
MAX_ARRAY_SIZE=${HPCLAB_SLURM_MAX_ARRAY_SIZE:-1001}
MAX_JOB_COUNT=${HPCLAB_SLURM_MAX_JOB_COUNT:-}
FIRST_JOB_ID=${HPCLAB_SLURM_FIRST_JOB_ID:-}
MARK="# written by hpclab scripts/local_slurm.sh"
HOST=$(hostname -s)
NODES=""  # --nodes N

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: error: $*" >&2; exit 1; }

alive() {  # alive <pidfile>: the pid in it is a running process
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (the daemons and /etc/slurm need it)"; }

install_packages() {
  local missing=()
  for cmd in munged slurmctld slurmd sinfo; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install failed; install slurmctld slurmd slurm-client munge"
}

configured_nodes() {  # the node count of our slurm.conf (1 when there is none)
  local n=""
  if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then
    n=$(sed -n 's/^NodeName=n\[1-\([0-9][0-9]*\)\].*/\1/p' "$CONF")
  fi
  echo "${n:-1}"
}

node_names() {  # node_names N: each node's NodeName, one a line
  if [ "$1" -eq 1 ]; then echo "$HOST"; else seq -f 'n%g' 1 "$1"; fi
}

print_conf() {  # print_conf N: the slurm.conf of an N-node cluster
  local n=$1 cpus mem_mb nodes extra="" port
  cpus=$(nproc)
  mem_mb=$(awk -v n="$n" '/MemTotal/ {printf "%d", $2 / 1024 * 0.9 / n}' /proc/meminfo)
  nodes=$HOST
  [ "$n" -gt 1 ] && nodes="n[1-$n]"
  [ -n "$MAX_JOB_COUNT" ] && extra+=$'\n'"MaxJobCount=$MAX_JOB_COUNT"
  [ -n "$FIRST_JOB_ID" ] && extra+=$'\n'"FirstJobId=$FIRST_JOB_ID"
  [ -n "$CTLD_PORT" ] && extra+=$'\n'"SlurmctldPort=$CTLD_PORT"
  [ "$n" -eq 1 ] && [ -n "$SLURMD_PORT" ] && extra+=$'\n'"SlurmdPort=$SLURMD_PORT"
  cat <<EOF
$MARK
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs are the consumable unit, so 1-CPU tasks pack even on hyper-threaded machines; jobs that
# ask for no memory get DefMemPerCPU instead of the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
ReturnToService=2
# Schedule at once and often; requeued jobs restart quickly; short waits between SIGTERM and SIGKILL.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=200000
KillWait=10
# A requeued job may start again after cred_expire + 1 s (default 120 s).
AuthInfo=cred_expire=10
MinJobAge=600
MaxArraySize=$MAX_ARRAY_SIZE${extra}
JobRequeue=1
# Refuse at submission a job that no partition can ever run (sbatch --nodes=3 on 2 nodes says
# "Node count specification invalid") instead of queueing it forever.
EnforcePartLimits=ALL
InactiveLimit=0
# Partition priority preemption: a job in partition urgent requeues jobs of partition debug at
# once (GraceTime=0: SIGTERM, KillWait, SIGKILL, requeue; with a GraceTime SLURM 22.05 does not
# requeue a job that exits on its own within it).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
EOF
  if [ "$n" -eq 1 ]; then
    cat <<EOF
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
EOF
  else
    # Several slurmd side by side (slurmd -N nK), each with its own port, pid file, spool and log
    # (%n: the node name). The names do not resolve by DNS: SLURM reaches the nodes at NodeAddr,
    # and jobs find their first node's address the same way (scontrol show node: NodeAddr).
    port=${SLURMD_PORT:-17001}
    cat <<EOF
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$nodes NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port-$((port + n - 1)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
EOF
  fi
  cat <<EOF
PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$nodes MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

write_conf() {  # write_conf N
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "${HPCLAB_SLURM_FORCE:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script; set HPCLAB_SLURM_FORCE=1 to replace it"
  fi
  mkdir -p "$CONF_DIR"
  local tmp
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  print_conf "$1" >"$tmp"
  chmod 644 "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; else mv -f "$tmp" "$CONF"; fi
}

start_munge() {
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  if alive /run/munge/munged.pid; then return; fi
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- munged || munged --force
  cp /run/munge/munged.pid "$RUN/munged.pid"
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

slurmd_pidfile() {  # slurmd_pidfile NODE N
  if [ "$2" -eq 1 ]; then echo "$RUN/slurmd.pid"; else echo "$RUN/slurmd-$1.pid"; fi
}

stop_slurmds() {  # every slurmd started here, whatever node count it was started for
  local file
  for file in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid; do
    [ -e "$file" ] && stop_one "slurmd ($(basename "$file" .pid))" "$file"
  done
  return 0
}

start() {
  need_root
  install_packages
  local n=${NODES:-$(configured_nodes)} node
  mkdir -p "$RUN" "$STATE" "$SPOOL" "$LOGS"
  local before=""
  [ -f "$CONF" ] && before=$(md5sum <"$CONF")
  write_conf "$n"
  start_munge
  if [ -n "$before" ] && [ "$before" != "$(md5sum <"$CONF")" ]; then
    # Some settings (AuthInfo, node lines) need a restart; the saved state keeps the jobs.
    say "slurm.conf changed: restarting the SLURM daemons"
    stop_slurmds
    stop_one slurmctld "$RUN/slurmctld.pid"
  fi
  # -i: ignore unreadable state files of an earlier cluster whose configuration differed.
  alive "$RUN/slurmctld.pid" || slurmctld -i || die "slurmctld did not start (see $LOGS/slurmctld.log)"
  for node in $(node_names "$n"); do
    if [ "$n" -eq 1 ]; then
      alive "$RUN/slurmd.pid" || slurmd || die "slurmd did not start (see $LOGS/slurmd.log)"
    else
      mkdir -p "$SPOOL/$node"
      alive "$(slurmd_pidfile "$node" "$n")" || slurmd -N "$node" || die "slurmd -N $node did not start (see $LOGS/slurmd-$node.log)"
    fi
  done
  local states="" ready
  for _ in $(seq 120); do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
    ready=0
    for node in $(node_names "$n"); do
      case "$(awk -v node="$node" '$1 == node {print $2; exit}' <<<"$states")" in
        idle|mixed|allocated|completing) ready=$((ready + 1)) ;;
        drain*|down*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
      esac
    done
    if [ "$ready" -eq "$n" ]; then
      say "$n node(s) up ($(node_names "$n" | paste -sd ' ')); partitions: $(sinfo -h -o %P | tr '\n' ' ')"
      [ "$CONF" != /etc/slurm/slurm.conf ] && say "clients: export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  tail -n 20 "$LOGS"/slurmctld.log "$LOGS"/slurmd*.log >&2 || true
  die "not every node became idle within 60 s (sinfo: ${states:-no answer})"
}

stop_one() {  # stop_one <name> <pidfile>
  local pidfile=$2 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped $1 ($pid)"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "killed $1 ($pid)"
}

stop() {
  need_root
  stop_slurmds
  stop_one slurmctld "$RUN/slurmctld.pid"
  # munged only if this script started it (its pid was recorded in $RUN).
  if [ -s "$RUN/munged.pid" ] && [ -s /run/munge/munged.pid ] && [ "$(cat "$RUN/munged.pid")" = "$(cat /run/munge/munged.pid)" ]; then
    stop_one munged "$RUN/munged.pid"
  fi
  rm -f "$RUN/munged.pid"
}

status() {
  local n node file
  n=$(configured_nodes)
  if alive /run/munge/munged.pid; then echo "munged: running (pid $(cat /run/munge/munged.pid))"; else echo "munged: stopped"; fi
  file="$RUN/slurmctld.pid"
  if alive "$file"; then echo "slurmctld: running (pid $(cat "$file")), $CONF"; else echo "slurmctld: stopped"; fi
  for node in $(node_names "$n"); do
    file=$(slurmd_pidfile "$node" "$n")
    if alive "$file"; then echo "slurmd $node: running (pid $(cat "$file"))"; else echo "slurmd $node: stopped"; fi
  done
  if scontrol ping >/dev/null 2>&1; then
    sinfo
    squeue
  else
    echo "controller: not answering"
    return 1
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:-}; shift 2 || true ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    *) die "unknown option $1 (usage: $0 start|stop|status|restart|conf [--nodes N])" ;;
  esac
done
if [ -n "$NODES" ] && ! [[ "$NODES" =~ ^[1-9][0-9]*$ ]]; then
  die "--nodes needs a whole number >= 1, not '$NODES'"
fi

case "$command" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  conf) print_conf "${NODES:-$(configured_nodes)}" ;;
  *) echo "usage: $0 start|stop|status|restart|conf [--nodes N]" >&2; exit 2 ;;
esac
