#!/usr/bin/env bash
# local-cluster.sh — a real single-node SLURM cluster on this machine, to prove profiles/slurm/ against it.
#
#   profiles/slurm/local-cluster.sh [start]   install (once), configure and start; wait until the node is idle
#   profiles/slurm/local-cluster.sh stop      stop every daemon this script started (by pid file)
#   profiles/slurm/local-cluster.sh status    show the daemons and `sinfo`
#
# For a throw-away Debian 12 machine or container where you are root (a CI runner, a dev VM); it rewrites
# /etc/slurm/{slurm,slurmdbd,gres}.conf. Idempotent: re-running `start` skips what is installed / running.
#
# What it sets up (Debian's slurm-wlm 22.05, munge, slurmdbd, mariadb):
#   - munge with a local key (created if missing), munged run as the munge user;
#   - mariadb (local socket only) holding the accounting database, and slurmdbd on localhost: the snakemake
#     SLURM executor plugin (2.x) polls job states with `sacct -X --clusters all --name <run uuid>`, which
#     needs slurmdbd; without it sacct answers "Slurm accounting storage is disabled" and the plugin would
#     have to be switched to `squeue` (`--slurm-status-command squeue`, needs MinJobAge >= 120 s);
#   - slurmctld + slurmd on this host: the node is this host with the CPU count and memory `slurmd -C`
#     reports, and one fake GRES gpu (File=/dev/null, no CUDA: a GPU job gets the slot, not a GPU),
#     so the profile's `gpu: 1` (sbatch --gpus=1) is accepted unchanged. Partitions "cpu" (default) and
#     "gpu" both hold the one node, as named in profiles/slurm/config.yaml;
#   - no cgroups (containers such as gVisor lack them): proctrack/linuxproc, task/none, jobacct_gather/linux.
#
# Daemons run as root, started directly (no systemd). Logs: /var/log/slurm/, /var/log/munge/, /var/log/mysql/.
# Environment: SLURM_LOCAL_CLUSTER_NAME (default "localcluster"), SLURM_LOCAL_GPUS (counted GPUs, default 1,
# 0 for none: then the profile's gpu requests cannot be met and local-test.sh sets them to 0).
set -euo pipefail

CLUSTER=${SLURM_LOCAL_CLUSTER_NAME:-localcluster}
GPUS=${SLURM_LOCAL_GPUS:-1}
HOST=$(hostname -s)
RUN=/run/slurm
LOG=/var/log/slurm
SPOOL=/var/lib/slurm
DB_PASS=slurm-local-only   # local socket/loopback only, throw-away machine

log() { printf '[local-cluster] %s\n' "$*" >&2; }

need_root() { [[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }   # alive PIDFILE

wait_for() {   # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for ((i = 0; i < limit * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out after ${limit}s waiting for $what"; return 1
}

stop_pidfile() {   # stop_pidfile NAME PIDFILE: SIGTERM the pid in PIDFILE, wait up to 30 s
    if alive "$2"; then
        local pid; pid=$(cat "$2")
        log "stopping $1 (pid $pid)"
        kill "$pid"
        for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
        log "$1 (pid $pid) did not stop"; return 1
    fi
}

install_packages() {
    local missing=()
    for p in slurm-wlm slurmdbd munge mariadb-server; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

write_configs() {
    local cpus mem node
    # the real hardware, as slurmd sees it: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105"
    node=$(slurmd -C | head -n1)
    node=${node#NodeName=* }
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    local gres_node="" gres_types=""
    if ((GPUS > 0)); then gres_node="Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"; fi
    mkdir -p /etc/slurm "$RUN" "$LOG" "$SPOOL/slurmctld" "$SPOOL/slurmd"
    local before; before=$(cat /etc/slurm/slurm.conf /etc/slurm/gres.conf 2>/dev/null || true)
    cat >/etc/slurm/slurm.conf <<EOF
# written by profiles/slurm/local-cluster.sh — single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
$gres_types
NodeName=$HOST $node $gres_node State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    if ((GPUS > 0)); then
        # GPU slots without GPUs: slurmd counts gres/gpu by device files, and without File= it reports 0
        # ("gres/gpu count reported lower than configured (0 < 1)", node INVAL); /dev/null stands in for a
        # device (no cgroup device constraint is configured, so it is never touched). One file per slot.
        : >/etc/slurm/gres.conf
        for ((g = 0; g < GPUS; g++)); do echo "NodeName=$HOST Name=gpu File=/dev/null" >>/etc/slurm/gres.conf; done
    else
        rm -f /etc/slurm/gres.conf
    fi
    cat >/etc/slurm/slurmdbd.conf <<EOF
# written by profiles/slurm/local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
    # already running with other settings: restart slurmctld and slurmd (some settings, e.g.
    # AccountingStorageTRES or Gres, are not taken by `scontrol reconfigure`); start_slurm starts them
    if [[ $before != "$(cat /etc/slurm/slurm.conf /etc/slurm/gres.conf 2>/dev/null || true)" ]]; then
        stop_pidfile slurmd $RUN/slurmd.pid
        stop_pidfile slurmctld $RUN/slurmctld.pid
    fi
    log "node $HOST: CPUs=$cpus RealMemory=${mem}MB GPUs(counted)=$GPUS; partitions cpu (default), gpu"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! alive /run/munge/munged.pid; then
        log "starting munged"
        runuser -u munge -- /usr/sbin/munged
    fi
    wait_for 10 munge bash -c 'munge -n | unmunge'
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! alive /run/mysqld/mysqld.pid; then
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        log "starting mariadb"
        setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
            --innodb-buffer-pool-size=64M </dev/null >>/var/log/mysql-local.log 2>&1 &
    fi
    wait_for 60 mariadb mariadb -u root -e 'select 1'
    mariadb -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurm() {
    if ! alive $RUN/slurmdbd.pid; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd
    fi
    wait_for 60 slurmdbd sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! alive $RUN/slurmctld.pid; then
        log "starting slurmctld"
        /usr/sbin/slurmctld
    fi
    wait_for 30 slurmctld scontrol ping
    if ! alive $RUN/slurmd.pid; then
        log "starting slurmd"
        /usr/sbin/slurmd
    fi
    # the node may come up "unknown"/"down" from an earlier run's state: ReturnToService=2 resumes it
    if ! wait_for 60 "node $HOST idle" bash -c "sinfo -h -N -n $HOST -o %T | grep -qE '^(idle|mixed|allocated)'"; then
        scontrol update nodename="$HOST" state=resume || true
        wait_for 30 "node $HOST idle" bash -c "sinfo -h -N -n $HOST -o %T | grep -qE '^(idle|mixed|allocated)'"
    fi
}

case ${1:-start} in
start)
    need_root
    t0=$(date +%s)
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm
    sinfo
    log "cluster up in $(($(date +%s) - t0)) s"
    ;;
stop)
    need_root
    stop_pidfile slurmd $RUN/slurmd.pid || true
    stop_pidfile slurmctld $RUN/slurmctld.pid || true
    stop_pidfile slurmdbd $RUN/slurmdbd.pid || true
    stop_pidfile mariadb /run/mysqld/mysqld.pid || true
    stop_pidfile munged /run/munge/munged.pid || true
    ;;
status)
    for d in munge/munged mysqld/mysqld slurm/slurmdbd slurm/slurmctld slurm/slurmd; do
        if alive "/run/$d.pid"; then echo "${d#*/}: running (pid $(cat "/run/$d.pid"))"; else echo "${d#*/}: stopped"; fi
    done
    sinfo 2>/dev/null || true
    ;;
*)
    echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
