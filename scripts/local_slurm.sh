#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for development and CI (Debian's SLURM 22.05, no systemd).
#
#   scripts/local_slurm.sh start    # write slurm.conf, start munged, slurmctld, slurmd; wait until idle
#   scripts/local_slurm.sh status   # daemons, sinfo and squeue
#   scripts/local_slurm.sh stop     # stop the daemons this script started (by their pid files)
#
# Needs root and the Debian packages `slurmctld slurmd slurm-client munge`; `start` installs them
# with apt-get when they are missing. Starting twice is fine: running daemons are left alone.
# It refuses to overwrite a slurm.conf it did not write (set HPCLAB_SLURM_FORCE=1 to allow it).
#
# The cluster: node $(hostname -s) with all its CPUs and 90% of its memory, partitions `debug`
# (default, jobs in it can be preempted by requeue) and `urgent` (preempts `debug`), no GPUs, no
# accounting (sacct is absent; job state comes from squeue), quick scheduling and short kill waits.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
RUN=/run/hpclab-slurm            # pid files of the daemons started here
MARK="# written by hpclab scripts/local_slurm.sh"
HOST=$(hostname -s)

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

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "${HPCLAB_SLURM_FORCE:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script; set HPCLAB_SLURM_FORCE=1 to replace it"
  fi
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$CONF_DIR"
  local tmp
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  cat >"$tmp" <<EOF
$MARK
ClusterName=hpclab
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
MaxArraySize=10001
JobRequeue=1
InactiveLimit=0
# Partition priority preemption: a job in partition urgent requeues jobs of partition debug at
# once (GraceTime=0: SIGTERM, KillWait, SIGKILL, requeue; with a GraceTime SLURM 22.05 does not
# requeue a job that exits on its own within it).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
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

start() {
  need_root
  install_packages
  mkdir -p "$RUN" "$STATE" "$SPOOL" "$LOGS"
  local before=""
  [ -f "$CONF" ] && before=$(md5sum <"$CONF")
  write_conf
  start_munge
  if [ -n "$before" ] && [ "$before" != "$(md5sum <"$CONF")" ]; then
    # Some settings (AuthInfo, node lines) need a restart; the saved state keeps the jobs.
    say "slurm.conf changed: restarting the SLURM daemons"
    stop_one slurmd "$RUN/slurmd.pid"
    stop_one slurmctld "$RUN/slurmctld.pid"
  fi
  # -i: ignore unreadable state files of an earlier cluster whose configuration differed.
  alive "$RUN/slurmctld.pid" || slurmctld -i || die "slurmctld did not start (see $LOGS/slurmctld.log)"
  alive "$RUN/slurmd.pid" || slurmd || die "slurmd did not start (see $LOGS/slurmd.log)"
  local state=""
  for _ in $(seq 120); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mixed|allocated|completing) say "node $HOST is $state; partitions: $(sinfo -h -o %P | tr '\n' ' ')"; return 0 ;;
      drain*|down*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  die "node $HOST did not become idle within 60 s (state: ${state:-no answer})"
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
  stop_one slurmd "$RUN/slurmd.pid"
  stop_one slurmctld "$RUN/slurmctld.pid"
  # munged only if this script started it (its pid was recorded in $RUN).
  if [ -s "$RUN/munged.pid" ] && [ -s /run/munge/munged.pid ] && [ "$(cat "$RUN/munged.pid")" = "$(cat /run/munge/munged.pid)" ]; then
    stop_one munged "$RUN/munged.pid"
  fi
  rm -f "$RUN/munged.pid"
}

status() {
  local name file
  for name in munged slurmctld slurmd; do
    file="$RUN/$name.pid"
    [ "$name" = munged ] && file=/run/munge/munged.pid
    if alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
  done
  if scontrol ping >/dev/null 2>&1; then
    sinfo
    squeue
  else
    echo "controller: not answering"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
