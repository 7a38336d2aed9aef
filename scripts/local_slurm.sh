#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests and bench/sweep.py (Debian's slurmctld, slurmd,
# slurm-client and munge; `make test` installs them). Run as root: slurmd starts the jobs.
#
#   scripts/local_slurm.sh start [DIR]   # writes DIR/slurm.conf, starts munged (if none runs), slurmctld, slurmd;
#                                        # prints SLURM_CONF=DIR/slurm.conf once the node is idle
#   scripts/local_slurm.sh stop [DIR]    # stops the slurmctld and slurmd started with DIR (munged is left)
#
# DIR defaults to $IVIT_SLURM_DIR or /tmp/ivit-slurm; a cluster already running from DIR is reused. The daemons
# listen on ports 16817/16818 (not Slurm's defaults, so a real cluster's config on this host is left alone);
# clients find this cluster through SLURM_CONF. Exit status: 0 up, 3 not root, 4 not installed, 5 did not start.
set -euo pipefail

action=${1:-start}
dir=${2:-${IVIT_SLURM_DIR:-/tmp/ivit-slurm}}
conf="$dir/slurm.conf"
host=$(hostname -s)

say() { echo "local_slurm: $*" >&2; }

up() {  # the node answers and is usable
    SLURM_CONF="$conf" timeout 10 sinfo -h -n "$host" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "munged did not start"
    exit 5
}

write_conf() {
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool"
    cat > "$conf" <<CONF
# Written by scripts/local_slurm.sh: one node, this host.
ClusterName=ivit
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -s "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    for daemon in slurmd slurmctld; do
        for _ in $(seq 50); do
            [ -s "$dir/$daemon.pid" ] && kill -0 "$(cat "$dir/$daemon.pid")" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$dir/$daemon.pid"
    done
}

case "$action" in
start)
    [ "$(id -u)" = 0 ] || { say "run as root (slurmd starts the jobs)"; exit 3; }
    for bin in slurmctld slurmd sinfo sbatch munged; do
        command -v "$bin" >/dev/null || { say "$bin not installed: apt-get install slurmctld slurmd slurm-client munge"; exit 4; }
    done
    if [ -f "$conf" ] && up; then
        say "reused the cluster running from $dir"
        echo "SLURM_CONF=$conf"
        exit 0
    fi
    start_munge
    stop
    write_conf
    slurmctld -f "$conf"
    SLURM_CONF="$conf" slurmd -f "$conf"
    for i in $(seq 150); do
        if up; then
            say "started a one-node cluster from $dir"
            echo "SLURM_CONF=$conf"
            exit 0
        fi
        if [ "$i" = 30 ]; then  # a node left down by an earlier run comes back
            SLURM_CONF="$conf" scontrol update nodename="$host" state=resume 2>/dev/null || true
        fi
        sleep 0.2
    done
    say "the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log"
    exit 5
    ;;
stop)
    stop
    ;;
*)
    say "usage: $0 start|stop [DIR]"
    exit 2
    ;;
esac
