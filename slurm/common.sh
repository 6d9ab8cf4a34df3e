# Shared by slurm/start.sh and slurm/stop.sh (sourced, not run): where the daemons of the
# single-node cluster keep their pid files and logs, and how to read slurm.conf.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source it

SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
SLURM_LOG_DIR=/var/log/slurm
MUNGE_PIDFILE=/run/munge/munged.pid
MARIADB_PIDFILE=/run/mysqld/mysqld.pid
SLURMDBD_PIDFILE=/run/slurmdbd.pid
SLURMCTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid

# conf_value KEY [FILE]: the value of KEY=VALUE in a slurm config file (first match, no comments).
conf_value() {
    awk -F= -v key="$1" 'tolower($1) == tolower(key) { sub(/^[^=]*=/, ""); print; exit }' \
        "${2:-$SLURM_CONF}"
}

# node_name: the NodeName of the single node declared in slurm.conf.
node_name() {
    awk '/^NodeName=/ { sub(/^NodeName=/, "", $1); print $1; exit }' "$SLURM_CONF"
}

# accounting_enabled: true when slurm.conf stores accounting in slurmdbd (install.sh default).
accounting_enabled() {
    [ "$(conf_value AccountingStorageType)" = "accounting_storage/slurmdbd" ]
}

# pid_alive PID: true while PID runs (a zombie waiting for its parent to reap it is not running).
pid_alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# daemon_pid NAME PIDFILE: print the pid of the running daemon NAME, or fail. The pid file must
# name a live process whose command is NAME, so a stale file (after a reboot) is not trusted.
daemon_pid() {
    local name=$1 pidfile=$2 pid comm
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' < "$pidfile")
    [ -n "$pid" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "$name" ] && pid_alive "$pid" || return 1
    echo "$pid"
}

# stop_daemon NAME PIDFILE: SIGTERM the daemon named in PIDFILE, SIGKILL it after 20 s.
stop_daemon() {
    local name=$1 pidfile=$2 pid
    pid=$(daemon_pid "$name" "$pidfile") || return 0
    echo "${0##*/}: stopping $name ($pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 40); do
        pid_alive "$pid" || return 0
        sleep 0.5
    done
    echo "${0##*/}: $name ($pid) ignored SIGTERM for 20 s: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

# node_state: the node's state as sinfo prints it (idle, mixed, down*, drained, ...), or nothing
# (never fails: callers run under set -e and poll it while the controller starts).
node_state() {
    { sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null || true; } | head -n 1
}

# show_logs: the tail of each daemon's log, for an error message.
show_logs() {
    local f
    for f in "$SLURM_LOG_DIR"/slurmctld.log "$SLURM_LOG_DIR"/slurmd.log \
             "$SLURM_LOG_DIR"/slurmdbd.log "$SLURM_LOG_DIR"/*.stderr \
             /var/log/munge/munged.log /var/log/mysql/error.log; do
        [ -s "$f" ] || continue
        echo "----- tail of $f" >&2
        tail -n 15 "$f" >&2
    done
}
