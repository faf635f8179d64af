#!/usr/bin/env bash
# A single-node Slurm cluster with accounting, for the tests marked slurm (tests/test_slurm.py).
#   sudo bash tests/slurm/cluster.sh up     # install (Debian: slurm-wlm, slurmdbd, munge, mariadb-server),
#                                           # configure and start; returns once sinfo shows the node idle
#   pytest -m slurm -n 0
#   sudo bash tests/slurm/cluster.sh down   # stop every daemon it started
# Meant for a CI machine or a throwaway container (root, Debian bookworm, no systemd): it writes
# /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf, where sinfo and sbatch look, and keeps its state, logs
# and pid files in $SNNEXP_SLURM_DIR (default /var/tmp/snnexp-slurm). The daemons are started directly.
#
# Partitions (all on this node; jobs run as the submitting user):
#   debug   default; preemptable (PreemptMode=REQUEUE, GraceTime=0: killed at once, then requeued)
#   grace   preemptable with GraceTime=30: SIGTERM first, SIGKILL 30 s later, then requeued
#   urgent  PriorityTier=10: a job here preempts debug and grace jobs holding what it needs
# An urgent job asking for the whole node (--exclusive) preempts every debug and grace job on it.
# AuthInfo cred_expire=10 (default 120): a requeued job waits that long in PENDING (BeginTime) before it may
# start again, so each requeue in the tests costs ~12 s instead of ~2 minutes (cred_expire=5: 7 s, but a job
# step's credential must be used within that time, which a loaded machine might not do).
set -euo pipefail

DIR=${SNNEXP_SLURM_DIR:-/var/tmp/snnexp-slurm}
CONF=/etc/slurm
CLUSTER=snnexp

log() { echo "cluster.sh: $*" >&2; }

install_packages() {
  local missing=()
  for bin in slurmctld slurmd slurmdbd munged mariadbd; do
    command -v "$bin" >/dev/null || missing+=("$bin")
  done
  if ((${#missing[@]})); then
    log "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurm-wlm slurmdbd munge mariadb-server >/dev/null
  fi
}

write_configs() {
  local node cpus mem_mb
  node=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')  # leave the OS a tenth
  mkdir -p "$CONF" "$DIR"/{ctld,slurmd,log,run}
  cat >"$CONF/slurm.conf" <<EOF
# Written by snnexp tests/slurm/cluster.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/ctld
# Job ids must not repeat ones the accounting database (which outlives $DIR/ctld) already holds: sacct -j N
# returns every job N ever had, and submitit read an old "N COMPLETED" as the end of a requeued job N.
FirstJobId=$(( $(date +%s) % 50000000 + 1000 ))
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
DefMemPerCPU=1024
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=0
PartitionName=grace Nodes=$node MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=urgent Nodes=$node MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
# Written by snnexp tests/slurm/cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF/slurmdbd.conf"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for ((i = 0; i < seconds * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "timed out after ${seconds} s waiting for $what; logs in $DIR/log"
  tail -n 20 "$DIR"/log/*.log >&2 || true
  return 1
}

node_idle() { sinfo -h -N -o %T | grep -qx idle; }

up() {
  install_packages
  write_configs
  log "munged"
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
  munge -n >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge -n

  log "mariadb"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb-admin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    (setsid mariadbd --user=mysql --datadir=/var/lib/mysql --pid-file=/run/mysqld/snnexp.pid \
      >"$DIR/log/mariadb.log" 2>&1 &)
  fi
  wait_for 30 mariadb mariadb-admin ping
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

  log "slurmdbd"
  [ -f "$DIR/run/slurmdbd.pid" ] && kill -0 "$(cat "$DIR/run/slurmdbd.pid")" 2>/dev/null || slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  sacctmgr -i list cluster -n -P format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

  log "slurmctld, slurmd"
  [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null || slurmctld
  wait_for 30 slurmctld scontrol ping
  [ -f "$DIR/run/slurmd.pid" ] && kill -0 "$(cat "$DIR/run/slurmd.pid")" 2>/dev/null || slurmd
  wait_for 60 "the node to be idle" node_idle
  sinfo >&2
}

stop_pidfile() {  # stop_pidfile NAME: SIGTERM the daemon of $DIR/run/NAME.pid and wait until it is gone
  local file="$DIR/run/$1.pid" pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$file"
}

down() {
  if [ -f "$CONF/slurm.conf" ] && scontrol ping >/dev/null 2>&1; then
    scancel --full --quiet --state=RUNNING 2>/dev/null || true
    scancel --quiet 2>/dev/null || true
  fi
  stop_pidfile slurmd
  stop_pidfile slurmctld
  stop_pidfile slurmdbd
  if [ -f /run/mysqld/snnexp.pid ]; then  # the mariadbd that up started
    mariadb-admin shutdown 2>/dev/null || kill "$(cat /run/mysqld/snnexp.pid)" 2>/dev/null || true
    rm -f /run/mysqld/snnexp.pid
  fi
  if [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
