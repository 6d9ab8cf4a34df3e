#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start.sh.
#
#   bash slurm/stop.sh [--wipe]
#
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
while [ $# -gt 0 ]; do
    case "$1" in
        --wipe) wipe=1 ;;
        -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: unknown option '$1' (valid: --wipe)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "stop.sh: run as root." >&2
    exit 1
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
