#!/usr/bin/env bash
# start_slurm.sh [DIR]
# hpc-modatts copy of /work/shared/scripts/slurm/start_slurm.sh (default DIR /tmp/hpc-modatts-slurm),
# used by tests/integration/conftest.py.
#
# Bring up a real single-node SLURM cluster (munged + slurmctld + slurmd, and by
# default slurmdbd + a private MariaDB so that `sacct` answers) on this machine,
# without systemd and without cgroups. Everything (configs, key, state, spool,
# logs, pid files, database) lives under DIR (default /tmp/hpc-modatts-slurm).
# Idempotent: installs missing Debian packages, (re)writes the configs, starts
# only the daemons that are not already running, then waits until `sinfo` shows
# the node idle. Must run as root (Debian/Ubuntu, apt).
#
# Environment knobs (all optional):
#   WITH_DBD=1|0          1 (default): slurmdbd + MariaDB, so sacct works (submitit
#                         reads job states with sacct). 0: accounting_storage/none.
#   SLURM_CLUSTER_NAME    default "localslurm"
#   SLURM_PARTITION       default "debug"
#   SLURMCTLD_PORT / SLURMD_PORT / SLURMDBD_PORT / SLURM_DB_PORT
#                         defaults 6817 / 6818 / 6819 / 3307
#   LINK_ETC=1            also symlink /etc/slurm/slurm.conf -> DIR/etc/slurm.conf
#                         (only if /etc/slurm/slurm.conf does not exist yet), so
#                         clients work without SLURM_CONF.
#   START_TIMEOUT         seconds to wait for each daemon / the idle node (default 60)
#
# Afterwards:  source DIR/env.sh   (exports SLURM_CONF=DIR/etc/slurm.conf)
set -euo pipefail

DIR=${1:-${SLURM_LOCAL_DIR:-/tmp/hpc-modatts-slurm}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WITH_DBD=${WITH_DBD:-1}
CLUSTER=${SLURM_CLUSTER_NAME:-localslurm}
PARTITION=${SLURM_PARTITION:-debug}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
DBD_PORT=${SLURMDBD_PORT:-6819}
DB_PORT=${SLURM_DB_PORT:-3307}
TMO=${START_TIMEOUT:-60}
HOST=$(hostname -s)

log() { echo "[start_slurm $(date +%T)] $*"; }
die() { echo "[start_slurm] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# pid_alive PIDFILE NAME -> 0 if the pid in PIDFILE is alive and its comm starts with NAME
pid_alive() {
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  case "$(cat "/proc/$pid/comm")" in "$name"*) return 0;; *) return 1;; esac
}
wait_for() {  # wait_for DESCRIPTION CMD...
  local what=$1; shift
  local end=$((SECONDS + TMO))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${TMO}s waiting for: $what"
    sleep 0.5
  done
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- 1. install
need=()
for b in munged mungekey slurmctld slurmd sbatch; do command -v "$b" >/dev/null || need+=("$b"); done
if [ "$WITH_DBD" = 1 ]; then
  for b in slurmdbd mariadbd mariadb-install-db; do command -v "$b" >/dev/null || need+=("$b"); done
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ] || \
    ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || need+=(mysql-plugin)
fi
if [ ${#need[@]} -gt 0 ]; then
  pkgs=(munge slurmctld slurmd slurm-client)
  [ "$WITH_DBD" = 1 ] && pkgs+=(slurmdbd slurm-wlm-mysql-plugin mariadb-server)
  log "installing ${pkgs[*]} (missing: ${need[*]})"
  # keep the packages' init scripts from starting system-wide daemons
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# ---------------------------------------------------------------- 2. layout
mkdir -p "$DIR"/{etc,state,spool,log,run}
# munged insists that every directory above its socket is o+x; fall back to /run if not
MUNGE_DIR=$DIR/munge
p=$DIR
while [ "$p" != / ]; do
  if [ $(( 0$(stat -c %a "$p") & 01 )) -eq 0 ]; then
    MUNGE_DIR=/run/slurm-local-munge-$(printf %s "$DIR" | md5sum | cut -c1-10)
    log "$p is not o+x; munge socket goes to $MUNGE_DIR"
    break
  fi
  p=$(dirname "$p")
done
mkdir -p "$MUNGE_DIR"; chmod 755 "$MUNGE_DIR"
echo "$MUNGE_DIR" > "$DIR/run/munge_dir"
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_KEY=$DIR/etc/munge.key

# ---------------------------------------------------------------- 3. munge
if [ ! -s "$MUNGE_KEY" ]; then
  mungekey --create --keyfile="$MUNGE_KEY" 2>/dev/null || dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
fi
chown root:root "$MUNGE_KEY"; chmod 400 "$MUNGE_KEY"
if pid_alive "$MUNGE_DIR/munged.pid" munged; then
  log "munged already running (pid $(cat "$MUNGE_DIR/munged.pid"))"
else
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_DIR/munged.pid" \
         --seed-file="$DIR/run/munged.seed" --log-file="$DIR/log/munged.log" --num-threads=4 \
    || die "munged failed: $(tail -3 "$DIR/log/munged.log" 2>/dev/null)"
  wait_for "munge socket" bash -c "munge -n --socket='$MUNGE_SOCKET' | unmunge --socket='$MUNGE_SOCKET'"
  log "munged started (pid $(cat "$MUNGE_DIR/munged.pid"))"
fi

# ---------------------------------------------------------------- 4. configs
# node shape as slurmd sees it; RealMemory = 85% of what slurmd detects
read -r NODELINE < <(slurmd -C | head -1)
DET_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODELINE")
REAL_MEM=$(( DET_MEM * 85 / 100 ))
SHAPE=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' <<<"$NODELINE")

if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for slurmdbd + munge, AccountingStoragePass names the munge socket
AccountingStoragePass=$MUNGE_SOCKET"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

new_conf=$(cat <<EOF
# generated by start_slurm.sh -- single node, no cgroups, no systemd
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
KillWait=5
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 $SHAPE RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ ! -f "$DIR/etc/slurm.conf" ] || [ "$(cat "$DIR/etc/slurm.conf")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$DIR/etc/slurm.conf"; conf_changed=1
fi
export SLURM_CONF=$DIR/etc/slurm.conf
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" > "$DIR/env.sh"

if [ "${LINK_ETC:-0}" = 1 ]; then
  if [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm; ln -s "$SLURM_CONF" /etc/slurm/slurm.conf; log "linked /etc/slurm/slurm.conf"
  elif [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
    log "WARNING: /etc/slurm/slurm.conf exists and is not ours; left alone (use SLURM_CONF)"
  fi
fi

# ---------------------------------------------------------------- 5. MariaDB + slurmdbd
if [ "$WITH_DBD" = 1 ]; then
  DB=$DIR/db
  mkdir -p "$DB"
  if [ ! -d "$DB/data/mysql" ]; then
    log "initialising MariaDB in $DB/data"
    mariadb-install-db --no-defaults --user=root --datadir="$DB/data" \
      --auth-root-authentication-method=socket > "$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
  fi
  if pid_alive "$DB/mariadbd.pid" mariadbd; then
    log "mariadbd already running (pid $(cat "$DB/mariadbd.pid"))"
  else
    rm -f "$DB/mysqld.sock"
    setsid nohup mariadbd --no-defaults --user=root --datadir="$DB/data" --socket="$DB/mysqld.sock" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DB/mariadbd.pid" \
      --log-error="$DIR/log/mariadb.err" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
      </dev/null >>"$DIR/log/mariadbd.out" 2>&1 &
    wait_for "mariadbd" mariadb-admin --no-defaults -S "$DB/mysqld.sock" -u root ping
    log "mariadbd started (pid $(cat "$DB/mariadbd.pid"))"
  fi
  mariadb --no-defaults -S "$DB/mysqld.sock" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  cat > "$DIR/etc/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  if cmp -s "$DIR/etc/slurmdbd.conf.new" "$DIR/etc/slurmdbd.conf"; then rm -f "$DIR/etc/slurmdbd.conf.new"
  else mv "$DIR/etc/slurmdbd.conf.new" "$DIR/etc/slurmdbd.conf"; conf_changed=1; fi
  chmod 600 "$DIR/etc/slurmdbd.conf"   # slurmdbd refuses a readable one
  if pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    log "slurmdbd already running (pid $(cat "$DIR/run/slurmdbd.pid"))"
  else
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF
    setsid slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1
    wait_for "slurmdbd pid file" pid_alive "$DIR/run/slurmdbd.pid" slurmdbd
    wait_for "slurmdbd port $DBD_PORT" tcp_open "$DBD_PORT"
    log "slurmdbd started (pid $(cat "$DIR/run/slurmdbd.pid"))"
  fi
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
  log "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid"))"
  if [ $conf_changed = 1 ]; then log "config changed: scontrol reconfigure"; scontrol reconfigure || true; fi
else
  setsid slurmctld </dev/null >>"$DIR/log/slurmctld.out" 2>&1
  wait_for "slurmctld pid file" pid_alive "$DIR/run/slurmctld.pid" slurmctld
  wait_for "slurmctld to answer" scontrol ping
  log "slurmctld started (pid $(cat "$DIR/run/slurmctld.pid"))"
fi
if pid_alive "$DIR/run/slurmd.pid" slurmd; then
  log "slurmd already running (pid $(cat "$DIR/run/slurmd.pid"))"
else
  setsid slurmd -N "$HOST" </dev/null >>"$DIR/log/slurmd.out" 2>&1
  wait_for "slurmd pid file" pid_alive "$DIR/run/slurmd.pid" slurmd
  log "slurmd started (pid $(cat "$DIR/run/slurmd.pid"))"
fi

# ---------------------------------------------------------------- 7. wait for the node
node_ready() {
  local st; st=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1)
  case "$st" in
    idle|mixed|allocated|completing) return 0;;
    down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; return 1;;
    *) return 1;;
  esac
}
wait_for "node $HOST to become idle in sinfo" node_ready
if [ "$WITH_DBD" = 1 ]; then
  wait_for "sacct to answer" sacct -n -X -S now
  wait_for "cluster $CLUSTER registered in slurmdbd" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx '$CLUSTER'"
fi
sinfo
log "cluster up. Use:  source $DIR/env.sh   (SLURM_CONF=$SLURM_CONF)"
