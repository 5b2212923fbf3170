#!/usr/bin/env bash
# stop_slurm.sh [DIR] [--purge]
# hpc-modatts copy of /work/shared/scripts/slurm/stop_slurm.sh, used by tests/integration/conftest.py.
#
# Stops what start_slurm.sh started under DIR (default /tmp/hpc-modatts-slurm): cancels
# all jobs of that cluster, then stops slurmd, slurmctld, slurmdbd, mariadbd and
# munged by the pids in their pid files (TERM, then KILL after 15 s). Never kills
# by name. --purge also deletes DIR (state, logs, database).
set -uo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/hpc-modatts-slurm}
PURGE=0
for a in "$@"; do
  case "$a" in --purge) PURGE=1;; *) DIR=$a;; esac
done
[ -d "$DIR" ] || { echo "[stop_slurm] nothing at $DIR"; exit 0; }
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF=$DIR/etc/slurm.conf
log() { echo "[stop_slurm $(date +%T)] $*"; }

pid_of() {  # pid_of PIDFILE NAME -> prints pid if alive and comm matches NAME
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  case "$(cat "/proc/$pid/comm")" in "$name"*) echo "$pid";; *) return 1;; esac
}
stop_one() {  # stop_one PIDFILE NAME
  local f=$1 name=$2 pid i
  if ! pid=$(pid_of "$f" "$name"); then rm -f "$f"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 75); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then log "$name ($pid) ignored TERM; KILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  rm -f "$f"
  log "stopped $name ($pid)"
}

# 1. cancel jobs while slurmctld is still there, and wait for their steps to end
if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for i in $(seq 1 40); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi
# a live slurmstepd keeps a unix socket (NODE_JOB.STEP) in the spool dir; give them a moment
step_socks() { find "$DIR/spool" -maxdepth 1 -type s 2>/dev/null; }
for i in $(seq 1 20); do
  [ -z "$(step_socks)" ] && break
  sleep 0.5
done
[ -n "$(step_socks)" ] && log "WARNING: job step sockets still in $DIR/spool: $(step_socks | tr '\n' ' ')"

# 2. daemons, in reverse start order
stop_one "$DIR/run/slurmd.pid" slurmd
stop_one "$DIR/run/slurmctld.pid" slurmctld
stop_one "$DIR/run/slurmdbd.pid" slurmdbd
stop_one "$DIR/db/mariadbd.pid" mariadbd
MUNGE_DIR=$DIR/munge
[ -s "$DIR/run/munge_dir" ] && MUNGE_DIR=$(cat "$DIR/run/munge_dir")
stop_one "$MUNGE_DIR/munged.pid" munged

# 3. the optional /etc link, if it is ours
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  rm -f /etc/slurm/slurm.conf; log "removed /etc/slurm/slurm.conf link"
fi
case "$MUNGE_DIR" in /run/slurm-local-munge-*) rm -rf "$MUNGE_DIR";; esac
if [ $PURGE = 1 ]; then rm -rf "$DIR"; log "removed $DIR"; fi
log "done"
