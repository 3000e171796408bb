#!/usr/bin/env bash
# A single-node SLURM on this machine (Debian's slurm-wlm and munge), to try
# `locbench sweep --executor slurm` and for `nox -s slurm`:
#
#   scripts/slurm-localhost.sh        install if missing, configure, start; wait for an idle node
#   scripts/slurm-localhost.sh stop   stop slurmd, slurmctld and munged
#
# Needs root (apt, daemons). Idempotent: a running setup is left as it is. The configuration
# suits a container: no cgroups (proctrack/linuxproc, task/none) and no accounting (no slurmdbd;
# sacct does not work, squeue does). It replaces /etc/slurm/slurm.conf: not for a real cluster.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
WAIT_S=${SLURM_LOCALHOST_WAIT_S:-60}

log() { echo "slurm-localhost: $*" >&2; }

running() { pgrep -x "$1" >/dev/null; }

# Stop the daemon NAME of PIDFILE: SIGTERM, SIGKILL if still there after 10 s. Waits until it is
# gone, so that a start right after does not take an exiting daemon for a running one.
stop_daemon() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then  # not a recycled pid
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    scontrol shutdown >/dev/null 2>&1 || true  # the orderly way; the pids below if it fails
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
    stop_daemon munged /run/munge/munged.pid
    log "stopped"
}

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

configure() {
    local cpus mem
    cpus=$(nproc)
    # Leave some memory to the system: slurmd refuses a node that reports less than declared.
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge
    local new
    new=$(cat <<EOF
# Written by scripts/slurm-localhost.sh: one node, this host; no cgroups, no accounting.
ClusterName=localhost
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [ "$(cat "$CONF" 2>/dev/null)" != "$new" ]; then
        printf '%s\n' "$new" >"$CONF"
        CHANGED=1
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key  # the apt postinst normally made one
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
}

start() {
    install
    CHANGED=0
    configure
    if [ "$CHANGED" = 1 ] && { running slurmctld || running slurmd; }; then
        log "configuration changed: restarting"
        stop
    fi
    # The socket, not only the process: a munged that is exiting still shows in pgrep.
    [ -S /run/munge/munge.socket.2 ] && running munged || runuser -u munge -- munged
    running slurmctld || slurmctld
    running slurmd || slurmd
    for _ in $(seq "$WAIT_S"); do
        state=$(timeout 5 sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)
        case "$state" in
            idle | mixed | allocated)
                log "node $HOST $state (partition local, $(nproc) CPUs)"
                return 0
                ;;
            down* | drain* | fail*)
                scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
                ;;
        esac
        sleep 1
    done
    log "the node did not come up in ${WAIT_S} s (state: ${state:-none}); see /var/log/slurm/"
    tail -n 5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 [start|stop]" >&2
        exit 2
        ;;
esac
