#!/usr/bin/env bash
# A one-node Slurm on this machine, for tests and demos (issue 13). Run as root.
#   scripts/slurm-local.sh start    start munged (if not running), slurmctld and slurmd; wait until the
#                                   node is idle. Does nothing if the cluster already answers.
#   scripts/slurm-local.sh wait     wait until the node is idle (start does this): up to 30 s, or up to
#                                   120 s while a stale job (one killed whole) is still completing
#   scripts/slurm-local.sh stop     stop slurmctld and slurmd (and munged if this script started it)
#   scripts/slurm-local.sh status   exit 0 if the controller answers and the node is up
# Needs Debian's packages: apt-get install -y slurm-wlm munge (scripts/setup.sh --dev installs them).
# Everything lives under $PREFLENS_SLURM_DIR (default /tmp/preflens-slurm): config, state, spool, logs,
# pid files. Outside it, only what the packages require: /etc/slurm/slurm.conf (a symlink to ours, so
# sinfo/sbatch/squeue find it; removed by stop), the munge key /etc/munge/munge.key and /run/munge.
# No systemd needed (containers). The node gets the CPUs slurmd -C reports and at most 20000 MB.
set -euo pipefail

DIR=${PREFLENS_SLURM_DIR:-${TMPDIR:-/tmp}/preflens-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by PrefLens scripts/slurm-local.sh"
PARTITION=debug
UP_S=${PREFLENS_SLURM_UP_S:-30}        # for the node to come up idle
STALE_S=${PREFLENS_SLURM_STALE_S:-120} # while it is completing a stale job (it cleared 35 s after slurmd started)

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it starts munged, slurmctld and slurmd)"; }

need_tools() {
  local t
  for t in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found: apt-get install -y slurm-wlm munge (or scripts/setup.sh --dev)"
  done
}

host_name() {
  local h
  h=$(hostname -s 2>/dev/null || true)
  [ -n "$h" ] || die "hostname -s gives no name; Slurm needs one for its node"
  echo "$h"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating a random /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  # as the munge user, like the Debian service; --force where a container's folder perms displease it
  runuser -u munge -- munged 2>"$DIR/munged.err" || runuser -u munge -- munged --force 2>>"$DIR/munged.err" \
    || { cat "$DIR/munged.err" >&2; die "munged did not start"; }
  touch "$DIR/munged.ours"
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  cat "$DIR/munged.err" >&2
  die "munged started but munge -n | unmunge fails"
}

write_conf() {
  local host="$1" hw cpus mem
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and is not ours: this machine has its own Slurm; use that one"
  fi
  # what slurmd sees; a node that claims more than this is set DRAIN (INVAL) by slurmctld
  hw=$(slurmd -C | head -1) || die "slurmd -C failed"
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs/RealMemory from: $hw"
  [ "$mem" -gt 20000 ] && mem=20000
  # keep the socket/core/thread layout slurmd reports, with our memory figure
  hw=$(sed -e 's/ RealMemory=[0-9]*//' -e 's/^NodeName=[^ ]* //' <<<"$hw")
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$DIR/slurm.conf" <<EOF
$MARK on $(date -u +%FT%TZ); $DIR holds everything
ClusterName=preflens
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SlurmdTimeout=30
ReturnToService=2
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 $hw RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p /etc/slurm
  ln -sfn "$DIR/slurm.conf" "$CONF"
  echo "$cpus"
}

ctld_up() { scontrol ping 2>/dev/null | grep -q "UP"; }

node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -1; }

pid_of() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }

start() {
  need_root
  need_tools
  local host i
  host=$(host_name)
  mkdir -p "$DIR"
  if [ -L "$CONF" ] && ctld_up && [ "$(node_state "$host")" = idle ]; then
    say "already running (node $host idle)"
    return 0
  fi
  start_munge
  write_conf "$host" >/dev/null
  if ! pid_of "$DIR/slurmctld.pid" >/dev/null; then
    slurmctld -f "$DIR/slurm.conf" || die "slurmctld did not start; see $DIR/slurmctld.log"
  fi
  for i in $(seq 100); do ctld_up && break; sleep 0.2; done
  ctld_up || { tail -20 "$DIR/slurmctld.log" >&2; die "slurmctld does not answer"; }
  if ! pid_of "$DIR/slurmd.pid" >/dev/null; then
    slurmd -f "$DIR/slurm.conf" || die "slurmd did not start; see $DIR/slurmd.log"
  fi
  wait_idle "$host"
}

# Poll the node until it is idle (or mixed/allocated): UP_S seconds, or STALE_S while it is completing
# (or draining) a job from before a restart, e.g. one killed whole; slurmctld clears those itself.
wait_idle() {
  local host="$1" state="" told="" resumed="" limit=$UP_S t0=$SECONDS
  while :; do
    state=$(node_state "$host")
    case "$state" in
      idle|mixed|allocated) say "up: node $host $state, partition $PARTITION ($DIR)"; return 0 ;;
      *completing*|draining)
        limit=$STALE_S
        [ -n "$told" ] || say "waiting for a stale job to clear, state: $state (up to $STALE_S s) ..."
        told=1 ;;
    esac
    case "$state" in
      *drain*|*down*|*inval*|*fail*)
        # a stale state from an earlier run; ReturnToService=2 brings back a node that registers correctly
        if [ -z "$resumed" ] && [ $((SECONDS - t0)) -ge 5 ]; then
          resumed=1
          scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
        fi ;;
    esac
    [ $((SECONDS - t0)) -lt "$limit" ] || break
    sleep 0.2
  done
  sinfo -N -l >&2 || true
  tail -20 "$DIR/slurmd.log" >&2 2>/dev/null || true
  die "node $host is not idle after $((SECONDS - t0)) s (state: ${state:-none})"
}

stop() {
  need_root
  local f pid
  [ -L "$CONF" ] && ctld_up && scontrol shutdown >/dev/null 2>&1 || true
  for f in slurmd slurmctld; do
    for _ in $(seq 50); do pid_of "$DIR/$f.pid" >/dev/null || break; sleep 0.2; done
    if pid=$(pid_of "$DIR/$f.pid"); then kill "$pid" 2>/dev/null || true; sleep 1; kill -9 "$pid" 2>/dev/null || true; fi
  done
  if [ -e "$DIR/munged.ours" ] && [ -s /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$DIR/munged.ours"
  fi
  if [ -L "$CONF" ] && [ "$(readlink "$CONF")" = "$DIR/slurm.conf" ]; then rm -f "$CONF"; fi
  say "stopped (logs and state kept in $DIR)"
}

status() {
  local host
  host=$(host_name)
  if [ -L "$CONF" ] && ctld_up; then
    sinfo -N -n "$host" -o "%N %P %T %c %m"
    case "$(node_state "$host")" in idle|mixed|allocated|completing) return 0 ;; esac
    return 3
  fi
  say "not running"
  return 3
}

case "${1:-}" in
  start) start ;;
  wait) wait_idle "$(host_name)" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|wait|stop|status" >&2; exit 2 ;;
esac
