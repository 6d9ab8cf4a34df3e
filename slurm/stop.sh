#!/usr/bin/env bash
# Stop the SLURM clusters started by slurm/start.sh.
#
#   bash slurm/stop.sh [--wipe] [--nodes 1|2]
#
# Without --nodes it stops both: the one-node cluster, and the two-node one if it runs
# (slurm/two-node.sh stop: every process in its namespaces, then the namespaces). --nodes 1 or
# --nodes 2 stops only that one. The rest of this comment is about the one-node cluster.
# Stops slurmctld and slurmd (scontrol shutdown), then slurmdbd, MariaDB and munged, each by the
# pid in its pid file. Jobs still running keep their state and are picked up by the next start.
# --wipe first cancels every job, then erases the controller's state and the accounting database
# so job ids start again at 1 (use a fresh submitit folder per launch: an old folder can then
# hand back an old job's result).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/common.sh
source "$here/common.sh"

wipe=0
nodes=all
while [ $# -gt 0 ]; do
    case "$1" in
        --wipe) wipe=1 ;;
        --nodes) nodes=${2:?--nodes needs 1 or 2}; shift ;;
        --nodes=*) nodes=${1#*=} ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: unknown option '$1' (valid: --wipe, --nodes 1|2)" >&2; exit 2 ;;
    esac
    shift
done
case "$nodes" in
    1|2|all) ;;
    *) echo "stop.sh: --nodes $nodes is not valid: 1 or 2 (or leave it out to stop both)." >&2
       exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "stop.sh: run as root." >&2
    exit 1
fi

if [ "$nodes" != 1 ]; then
    wipe_arg=()
    [ "$wipe" = 1 ] && wipe_arg=(--wipe)
    if [ "$nodes" = 2 ]; then
        exec bash "$here/two-node.sh" stop "${wipe_arg[@]}"
    fi
    # Both: the two-node cluster only if something of it is there (its namespaces, run dir).
    if bash "$here/two-node.sh" present; then
        bash "$here/two-node.sh" stop "${wipe_arg[@]}"
    fi
fi

ctld_pid=$(daemon_pid slurmctld "$SLURMCTLD_PIDFILE" || true)
if [ "$wipe" = 1 ] && [ -n "$ctld_pid" ]; then
    job_ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${job_ids// /}" ]; then
        echo "stop.sh: cancelling jobs $job_ids"
        # shellcheck disable=SC2086  # one job id per word
        scancel $job_ids || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# scontrol shutdown stops slurmctld and every slurmd it knows, after saving its state.
if [ -n "$ctld_pid" ]; then
    echo "stop.sh: scontrol shutdown"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 1 40); do
        pid_alive "$ctld_pid" || break
        sleep 0.5
    done
fi
# Whatever is left (a slurmd without a controller, a controller that did not answer).
stop_daemon slurmd "$SLURMD_PIDFILE"
stop_daemon slurmctld "$SLURMCTLD_PIDFILE"
stop_daemon slurmdbd "$SLURMDBD_PIDFILE"

if [ "$wipe" = 1 ]; then
    echo "stop.sh: wiping controller state (/var/spool/slurmctld, /var/spool/slurmd)"
    find /var/spool/slurmctld /var/spool/slurmd -mindepth 1 -delete 2>/dev/null || true
    if [ -f "$SLURMDBD_CONF" ] && mariadb-admin ping >/dev/null 2>&1; then
        db_name=$(conf_value StorageLoc "$SLURMDBD_CONF")
        echo "stop.sh: dropping accounting database $db_name"
        mariadb -u root -e "DROP DATABASE IF EXISTS \`$db_name\`;"
    fi
fi

if daemon_pid mariadbd "$MARIADB_PIDFILE" >/dev/null; then
    echo "stop.sh: stopping mariadbd"
    mariadb-admin -u root shutdown 2>/dev/null || stop_daemon mariadbd "$MARIADB_PIDFILE"
fi
stop_daemon munged "$MUNGE_PIDFILE"
if [ "$wipe" = 1 ]; then
    echo "stop.sh: SLURM stopped, state wiped: the next job id is 1."
else
    echo "stop.sh: SLURM stopped."
fi
