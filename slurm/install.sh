#!/usr/bin/env bash
# Install a single-node SLURM cluster on 127.0.0.1 (Debian 12 packages, run as root, no systemd).
#
#   bash slurm/install.sh [--no-accounting] [--partition NAME]
#
# Idempotent: installs only missing packages (apt-get update only when apt cannot find or fetch
# them), creates the munge key only if missing, and rewrites /etc/slurm/slurm.conf (and
# slurmdbd.conf) from the templates beside this script, sizing the node from nproc and
# /proc/meminfo. By default it also installs slurmdbd + MariaDB so that `sacct` works and
# submitit sees real job states (COMPLETED, FAILED, ...) rather than UNKNOWN; --no-accounting
# skips them. Start the daemons with slurm/start.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/common.sh
source "$here/common.sh"
accounting=1
partition=debug
cluster=moco3
node=localhost

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --no-accounting) accounting=0 ;;
        --accounting) accounting=1 ;;
        --partition) partition=${2:?--partition needs a name}; shift ;;
        --partition=*) partition=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (valid: --no-accounting, --partition NAME)" >&2
           exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs packages and writes /etc/slurm)." >&2
    exit 1
fi

# ---------------------------------------------------------------- packages
packages=(munge slurm-client slurmctld slurmd)
if [ "$accounting" = 1 ]; then
    packages+=(slurmdbd mariadb-server mariadb-client)
fi

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

apt_get() {
    # Other engineers may run apt at the same time: wait for the dpkg lock rather than fail.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q "$@"
}

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}"
    need_update=0
    for p in "${missing[@]}"; do
        has_candidate "$p" || need_update=1
    done
    [ "$need_update" = 1 ] && apt_get update
    # Stale package lists name versions the mirror no longer has: refresh once and retry.
    if ! apt_get install -y --no-install-recommends "${missing[@]}"; then
        apt_get update
        apt_get install -y --no-install-recommends "${missing[@]}"
    fi
else
    echo "install.sh: packages already installed (${packages[*]})"
fi

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    echo "install.sh: creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# ---------------------------------------------------------------- configuration
install -d -m 0755 /etc/slurm /var/log/slurm /var/spool/slurmd
install -d -m 0700 /var/spool/slurmctld

cpus=$(nproc)
mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Leave 5 % (at least 256 MB) to the OS so the node never advertises memory it lacks.
reserve_mb=$(( mem_total_mb / 20 > 256 ? mem_total_mb / 20 : 256 ))
mem_mb=$(( mem_total_mb - reserve_mb ))
def_mem=$(( mem_mb / cpus ))

if [ "$accounting" = 1 ]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
    acct_lines="AccountingStorageType=accounting_storage/none"
fi

render() {  # render TEMPLATE DEST MODE: fill @NAME@ placeholders, replace DEST only if it changed
    local template=$1 dest=$2 mode=$3 tmp
    tmp=$(mktemp "${dest}.XXXXXX")
    if ! awk -v cluster="$cluster" -v node="$node" -v cpus="$cpus" -v mem_mb="$mem_mb" \
        -v partition="$partition" -v def_mem="$def_mem" -v accounting="$acct_lines" \
        -v db_name="${db_name:-}" -v db_user="${db_user:-}" -v db_pass="${db_pass:-}" '
        {
            gsub(/@CLUSTER@/, cluster); gsub(/@NODE@/, node); gsub(/@CPUS@/, cpus)
            gsub(/@MEM_MB@/, mem_mb); gsub(/@PARTITION@/, partition)
            gsub(/@DEF_MEM_PER_CPU@/, def_mem); gsub(/@ACCOUNTING@/, accounting)
            gsub(/@DB_NAME@/, db_name)
            gsub(/@DB_USER@/, db_user); gsub(/@DB_PASS@/, db_pass)
            if ($0 ~ /@[A-Z_]+@/) { print "unfilled placeholder: " $0 > "/dev/stderr"; exit 1 }
            print
        }' "$template" > "$tmp"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        echo "install.sh: $dest unchanged"
    else
        mv -f "$tmp" "$dest"
        echo "install.sh: wrote $dest"
        changed=1
    fi
}

changed=0
render "$here/slurm.conf.in" "$SLURM_CONF" 0644

if [ "$accounting" = 1 ]; then
    db_name=slurm_acct_db
    db_user=slurm
    # Keep the password of an earlier install: the database user already has it.
    db_pass=$(conf_value StoragePass "$SLURMDBD_CONF" 2>/dev/null || true)
    [ -n "$db_pass" ] || db_pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    render "$here/slurmdbd.conf.in" "$SLURMDBD_CONF" 0600
else
    rm -f "$SLURMDBD_CONF"
fi

if [ "$changed" = 1 ] && daemon_pid slurmctld "$SLURMCTLD_PIDFILE" >/dev/null; then
    echo "install.sh: the configuration changed while SLURM runs:" \
         "restart it with 'bash slurm/stop.sh && bash slurm/start.sh'."
fi
acct_name=none
[ "$accounting" = 1 ] && acct_name=slurmdbd
echo "install.sh: node $node: CPUs=$cpus RealMemory=${mem_mb}MB, partition $partition," \
     "accounting $acct_name. Next: bash slurm/start.sh"
