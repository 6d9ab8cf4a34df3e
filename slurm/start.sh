#!/usr/bin/env bash
# Start the single-node SLURM cluster written by slurm/install.sh (as root, without systemd).
#
#   bash slurm/start.sh [--timeout SECONDS] [--nodes 1|2]
#
# --nodes 2 starts the two-node cluster instead (slurm/two-node.sh: a controller and two
# slurmd, each in its own network namespace); it exits 3, saying why, where this machine
# cannot create network namespaces. The rest of this comment is about the default, one node.
# Idempotent: starts only the daemons that are not running (munged, then MariaDB and slurmdbd
# when accounting is on, then slurmctld and slurmd), resumes the node if it is down or drained,
# and waits until sinfo shows it up (idle, mixed or allocated). If the node does not come up in
# time (default 60 s, or $MOCO3_SLURM_START_TIMEOUT) it fails and prints the daemons' log tails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/common.sh
source "$here/common.sh"

timeout_s=${MOCO3_SLURM_START_TIMEOUT:-60}
nodes=1
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s=${2:?--timeout needs seconds}; shift ;;
        --timeout=*) timeout_s=${1#*=} ;;
        --nodes) nodes=${2:?--nodes needs 1 or 2}; shift ;;
        --nodes=*) nodes=${1#*=} ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "start.sh: unknown option '$1' (valid: --timeout SECONDS, --nodes 1|2)" >&2
           exit 2 ;;
    esac
    shift
done
case "$nodes" in
    1) ;;
    2) exec bash "$here/two-node.sh" start --timeout "$timeout_s" ;;
    *) echo "start.sh: --nodes $nodes is not valid: 1 (loopback, the default) or 2" \
            "(two namespaced nodes)." >&2
       exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: run as root (the daemons run as root on this single-node cluster)." >&2
    exit 1
fi
if [ ! -f "$SLURM_CONF" ]; then
    echo "start.sh: $SLURM_CONF is missing: install first with 'bash slurm/install.sh'." >&2
    exit 1
fi

node=$(node_name)
t0=$(date +%s)

fail() {
    echo "start.sh: $*" >&2
    show_logs
    exit 1
}

# wait_for DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
    local what=$1
    shift
    until "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s) - t0 )) -ge "$timeout_s" ]; then
            fail "timed out after ${timeout_s}s waiting for $what."
        fi
        sleep 0.5
    done
}

node_up() {
    case "$(node_state)" in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}

daemons=(munged slurmctld slurmd)
accounting_enabled && daemons=(munged mariadbd slurmdbd slurmctld slurmd)

all_running() {
    daemon_pid munged "$MUNGE_PIDFILE" >/dev/null || return 1
    if accounting_enabled; then
        daemon_pid mariadbd "$MARIADB_PIDFILE" >/dev/null || return 1
        daemon_pid slurmdbd "$SLURMDBD_PIDFILE" >/dev/null || return 1
    fi
    daemon_pid slurmctld "$SLURMCTLD_PIDFILE" >/dev/null || return 1
    daemon_pid slurmd "$SLURMD_PIDFILE" >/dev/null
}

if all_running && node_up; then
    echo "start.sh: already running (${daemons[*]}); node $node is $(node_state)."
    exit 0
fi

install -d -m 0755 "$SLURM_LOG_DIR" /var/spool/slurmd
install -d -m 0700 /var/spool/slurmctld

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! daemon_pid munged "$MUNGE_PIDFILE" >/dev/null; then
    echo "start.sh: starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PIDFILE" \
        </dev/null >"$SLURM_LOG_DIR/munged.stderr" 2>&1 || fail "munged did not start."
fi
munge_ok() { munge -n </dev/null | unmunge; }
wait_for "munge to answer" munge_ok

# ---------------------------------------------------------------- accounting
if accounting_enabled; then
    db_name=$(conf_value StorageLoc "$SLURMDBD_CONF")
    db_user=$(conf_value StorageUser "$SLURMDBD_CONF")
    db_pass=$(conf_value StoragePass "$SLURMDBD_CONF")
    # The Debian package may have started MariaDB itself (where invoke-rc.d is allowed to):
    # a server that answers is used as it is.
    if ! mariadb-admin ping >/dev/null 2>&1; then
        echo "start.sh: starting mariadbd"
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql \
                >"$SLURM_LOG_DIR/mariadb-install-db.stderr" 2>&1 \
                || fail "mariadb-install-db failed."
        fi
        # setsid -f: detached from this shell and its pipes, so callers do not wait on it.
        setsid -f /usr/sbin/mariadbd --user=mysql --pid-file="$MARIADB_PIDFILE" \
            </dev/null >"$SLURM_LOG_DIR/mariadbd.stderr" 2>&1
    fi
    wait_for "MariaDB to answer (mariadb-admin ping)" mariadb-admin ping
    mariadb -u root <<SQL || fail "could not create the accounting database $db_name."
CREATE DATABASE IF NOT EXISTS \`$db_name\`;
CREATE USER IF NOT EXISTS '$db_user'@'localhost' IDENTIFIED BY '$db_pass';
ALTER USER '$db_user'@'localhost' IDENTIFIED BY '$db_pass';
GRANT ALL ON \`$db_name\`.* TO '$db_user'@'localhost';
SQL
    if ! daemon_pid slurmdbd "$SLURMDBD_PIDFILE" >/dev/null; then
        echo "start.sh: starting slurmdbd"
        slurmdbd </dev/null >"$SLURM_LOG_DIR/slurmdbd.stderr" 2>&1 || fail "slurmdbd did not start."
    fi
    wait_for "slurmdbd to answer (sacctmgr)" sacctmgr -n -P list cluster
    cluster=$(conf_value ClusterName)
    if [ -z "$(sacctmgr -n -P list cluster "$cluster" format=cluster)" ]; then
        sacctmgr -i add cluster "$cluster" >/dev/null || fail "could not register cluster $cluster."
    fi
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if ! daemon_pid slurmctld "$SLURMCTLD_PIDFILE" >/dev/null; then
    echo "start.sh: starting slurmctld"
    slurmctld </dev/null >"$SLURM_LOG_DIR/slurmctld.stderr" 2>&1 || fail "slurmctld did not start."
fi
wait_for "slurmctld to answer (scontrol ping)" scontrol ping
if ! daemon_pid slurmd "$SLURMD_PIDFILE" >/dev/null; then
    echo "start.sh: starting slurmd"
    # -N: the node is named "localhost" in slurm.conf, not after this machine's hostname.
    slurmd -N "$node" </dev/null >"$SLURM_LOG_DIR/slurmd.stderr" 2>&1 \
        || fail "slurmd did not start."
fi

# ---------------------------------------------------------------- node up
last_resume=0
until node_up; do
    state=$(node_state)
    now=$(date +%s)
    if [ $(( now - t0 )) -ge "$timeout_s" ]; then
        fail "node $node is '${state:-unknown}' after ${timeout_s}s, not idle."
    fi
    # A node left down or drained (by a crash or an earlier run) needs an explicit resume once
    # slurmd answers (no '*' = responding); ReturnToService=2 covers the plain 'down' case too.
    case "$state" in
        *\*) ;;
        down*|drain*)
            if [ $(( now - last_resume )) -ge 3 ]; then
                echo "start.sh: node $node is $state: resuming it"
                scontrol update nodename="$node" state=resume || true
                last_resume=$now
            fi ;;
    esac
    sleep 0.5
done
echo "start.sh: SLURM is up in $(( $(date +%s) - t0 ))s: node $node is $(node_state)" \
     "(partition $(sinfo -h -o %P | head -n 1))."
