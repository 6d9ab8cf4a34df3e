#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine: a controller and two compute nodes, each in
# its own network and UTS namespace, joined by veth pairs on a private bridge.
#
#   bash slurm/two-node.sh start [--timeout SECONDS]   (what `slurm/start.sh --nodes 2` runs)
#   bash slurm/two-node.sh stop [--wipe]               (what `slurm/stop.sh --nodes 2` runs)
#   bash slurm/two-node.sh check                       exit 0, or 3 and why namespaces fail
#   bash slurm/two-node.sh exec COMMAND...             run COMMAND on the login namespace
#
# Namespaces moco3-head (slurmctld, its munged, the bridge; clients run here), moco3-node1 and
# moco3-node2 (one slurmd each, hostnames node1 and node2). Addresses 10.213.0.0/24 exist only
# on the bridge and veth ends inside these namespaces, which have no default route: their
# traffic cannot leave them, and nothing outside them can reach them. The one-node cluster
# (root namespace, 127.0.0.1) is untouched and may run at the same time. stop requeues the
# running jobs (--wipe: cancels them and erases the state), ends every process in the
# namespaces (daemons and jobs), deletes the namespaces and their interfaces, and removes the
# files start wrote outside the log and state directories.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/common.sh
source "$here/common.sh"

NODES=(node1 node2)
HEAD_NS=moco3-head
SUBNET=10.213.0
HEAD_ADDR=$SUBNET.1
BRIDGE=m3br0
RUN_DIR=/run/moco3-two-node
STATE_DIR=/var/spool/moco3-two-node
LOG_DIR=/var/log/slurm/two-node
MUNGE_DIR=$RUN_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_PID=$MUNGE_DIR/munged.pid
CTLD_PID=$RUN_DIR/slurmctld.pid
NETNS_ETC=/etc/netns
EXIT_NO_NAMESPACES=3

say() { echo "two-node: $*"; }
node_ns() { echo "moco3-$1"; }
node_addr() { echo "$SUBNET.$((10 + ${1#node}))"; }
slurmd_pid_file() { echo "$RUN_DIR/slurmd-$1.pid"; }
namespaces() { echo "$HEAD_NS"; for n in "${NODES[@]}"; do node_ns "$n"; done; }
ns_exists() { [ -e "/run/netns/$1" ]; }
# enter NS HOSTNAME COMMAND...: run COMMAND in network namespace NS, in a mount namespace where
# /etc/hosts, /etc/resolv.conf and /etc/slurm are this cluster's (from /etc/netns/NS: names
# resolve from the hosts file alone, no outside DNS server is asked) and, unless HOSTNAME is
# empty, a UTS namespace of that hostname. (Not `ip netns exec`: it remounts /sys, hiding the
# cgroup mounts slurmd needs.)
enter() {
    local ns=$1 host=$2
    shift 2
    nsenter --net="/run/netns/$ns" -- unshare --mount --uts --propagation private -- sh -c '
        set -e
        etc=$1 host=$2
        shift 2
        mount --bind "$etc/hosts" /etc/hosts
        mount --bind "$etc/slurm" /etc/slurm
        mount --bind "$etc/resolv.conf" /etc/resolv.conf
        [ -z "$host" ] || hostname "$host"
        exec "$@"' sh "$NETNS_ETC/$ns" "$host" "$@"
}
# on_head COMMAND...: a SLURM client on the login namespace (its /etc/slurm is this cluster's).
on_head() { enter "$HEAD_NS" "" "$@"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "two-node.sh: run as root (it creates network namespaces)." >&2
        exit 1
    fi
}

# check: can this machine create what the cluster needs? Prints why not and exits 3.
check_namespaces() {
    local probe=moco3-probe-$$ err=""
    for tool in ip nsenter unshare runuser; do
        command -v "$tool" >/dev/null || { echo "$tool is not installed"; return 1; }
    done
    if ! err=$(ip netns add "$probe" 2>&1); then
        echo "cannot create a network namespace (ip netns add: ${err:-failed})"
        return 1
    fi
    if ! err=$( { ip -n "$probe" link add m3probe0 type bridge \
                  && ip -n "$probe" link add m3probe1 type veth peer name m3probe2; } 2>&1) \
       || ! err=$(nsenter --net="/run/netns/$probe" -- unshare --mount --uts \
                      --propagation private -- hostname m3probe 2>&1); then
        ip netns del "$probe" 2>/dev/null || true
        echo "cannot create a bridge, a veth pair or a UTS namespace (${err:-failed})"
        return 1
    fi
    ip netns del "$probe"
}

cmd_check() {
    need_root
    local why
    if why=$(check_namespaces); then
        say "this machine can create network and UTS namespaces, bridges and veth pairs."
        return 0
    fi
    echo "two-node: unavailable: $why" >&2
    return "$EXIT_NO_NAMESPACES"
}

# ---------------------------------------------------------------- start
render_conf() {
    local cpus mem_total_mb reserve_mb mem_mb def_mem lines="" n
    cpus=$(nproc)
    mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    reserve_mb=$(( mem_total_mb / 20 > 256 ? mem_total_mb / 20 : 256 ))
    mem_mb=$(( (mem_total_mb - reserve_mb) / ${#NODES[@]} ))
    def_mem=$(( mem_mb / cpus ))
    for n in "${NODES[@]}"; do
        lines+="NodeName=$n NodeHostname=$n NodeAddr=$(node_addr "$n") CPUs=$cpus Sockets=1"
        lines+=" CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN"$'\n'
    done
    awk -v head="$HEAD_ADDR" -v sock="$MUNGE_SOCKET" -v run="$RUN_DIR" -v state="$STATE_DIR" \
        -v logdir="$LOG_DIR" -v defmem="$def_mem" -v nodes="${lines%$'\n'}" \
        -v list="node[1-${#NODES[@]}]" '
        {
            gsub(/@HEAD_ADDR@/, head); gsub(/@MUNGE_SOCKET@/, sock); gsub(/@RUN_DIR@/, run)
            gsub(/@STATE_DIR@/, state); gsub(/@LOG_DIR@/, logdir); gsub(/@DEF_MEM_PER_CPU@/, defmem)
            gsub(/@NODE_LIST@/, list); gsub(/@NODE_LINES@/, nodes)
            if ($0 ~ /@[A-Z_]+@/) { print "unfilled placeholder: " $0 > "/dev/stderr"; exit 1 }
            print
        }' "$here/two-node.conf.in"
}

# write_etc: per namespace, the files `enter` mounts over /etc inside it only.
write_etc() {
    local conf hosts ns n
    conf=$(render_conf)
    hosts="127.0.0.1 localhost"$'\n'"$HEAD_ADDR head"$'\n'
    for n in "${NODES[@]}"; do hosts+="$(node_addr "$n") $n"$'\n'; done
    for ns in $(namespaces); do
        install -d -m 0755 "$NETNS_ETC/$ns/slurm"
        printf '%s\n' "$conf" > "$NETNS_ETC/$ns/slurm/slurm.conf"
        printf '%s' "$hosts" > "$NETNS_ETC/$ns/hosts"
        # The namespace's own loopback, where nothing listens: a name missing from the hosts
        # file fails at once, and no query ever leaves the namespace.
        printf '# two-node SLURM cluster: names come from /etc/hosts only\nnameserver 127.0.0.1\n' \
            > "$NETNS_ETC/$ns/resolv.conf"
    done
}

# setup_network: namespaces, the bridge in the head's, one veth pair per node (idempotent).
setup_network() {
    local n ns
    for ns in $(namespaces); do
        ns_exists "$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$HEAD_NS" link show "$BRIDGE" >/dev/null 2>&1 \
        || ip -n "$HEAD_NS" link add "$BRIDGE" type bridge
    ip -n "$HEAD_NS" addr replace "$HEAD_ADDR/24" dev "$BRIDGE"
    ip -n "$HEAD_NS" link set "$BRIDGE" up
    for n in "${NODES[@]}"; do
        ns=$(node_ns "$n")
        # Both ends are created inside the namespaces: the root namespace never holds them.
        ip -n "$HEAD_NS" link show "m3-$n" >/dev/null 2>&1 \
            || ip link add "m3-$n" netns "$HEAD_NS" type veth peer name eth0 netns "$ns"
        ip -n "$HEAD_NS" link set "m3-$n" master "$BRIDGE"
        ip -n "$HEAD_NS" link set "m3-$n" up
        ip -n "$ns" addr replace "$(node_addr "$n")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

nodes_up() {
    local states
    states=$(on_head sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    for n in "${NODES[@]}"; do
        case "$(awk -v n="$n" '$1 == n { print $2; exit }' <<<"$states")" in
            idle|mixed|allocated|completing) ;;
            *) return 1 ;;
        esac
    done
}

all_running() {
    daemon_pid munged "$MUNGE_PID" >/dev/null || return 1
    daemon_pid slurmctld "$CTLD_PID" >/dev/null || return 1
    for n in "${NODES[@]}"; do
        daemon_pid slurmd "$(slurmd_pid_file "$n")" >/dev/null || return 1
    done
}

show_two_node_logs() {
    local f
    for f in "$LOG_DIR"/*.log "$LOG_DIR"/*.stderr; do
        [ -s "$f" ] || continue
        echo "----- tail of $f" >&2
        tail -n 15 "$f" >&2
    done
}

cmd_start() {
    local timeout_s=${MOCO3_SLURM_START_TIMEOUT:-60} t0 why n ns state last_resume=0 now
    while [ $# -gt 0 ]; do
        case "$1" in
            --timeout) timeout_s=${2:?--timeout needs seconds}; shift ;;
            --timeout=*) timeout_s=${1#*=} ;;
            *) echo "two-node.sh start: unknown option '$1' (valid: --timeout SECONDS)" >&2
               exit 2 ;;
        esac
        shift
    done
    need_root
    for tool in munged slurmctld slurmd sinfo; do
        if ! command -v "$tool" >/dev/null; then
            echo "two-node.sh: $tool is missing: install first with 'bash slurm/install.sh'." >&2
            exit 1
        fi
    done
    if [ ! -d /etc/slurm ] || [ ! -s /etc/munge/munge.key ]; then
        echo "two-node.sh: /etc/slurm or the munge key is missing: install first with" \
             "'bash slurm/install.sh'." >&2
        exit 1
    fi
    if ! ns_exists "$HEAD_NS" && ! why=$(check_namespaces); then
        echo "two-node: unavailable: $why" >&2
        exit "$EXIT_NO_NAMESPACES"
    fi
    if ns_exists "$HEAD_NS" && all_running && nodes_up; then
        say "already running: nodes ${NODES[*]} are up."
        return 0
    fi
    t0=$(date +%s)
    fail() {
        echo "two-node.sh: $*" >&2
        show_two_node_logs
        exit 1
    }
    wait_for() {
        local what=$1
        shift
        until "$@" >/dev/null 2>&1; do
            [ $(( $(date +%s) - t0 )) -lt "$timeout_s" ] \
                || fail "timed out after ${timeout_s}s waiting for $what."
            sleep 0.5
        done
    }

    install -d -m 0755 "$RUN_DIR" "$LOG_DIR" "$STATE_DIR"
    install -d -m 0700 "$STATE_DIR/slurmctld"
    for n in "${NODES[@]}"; do install -d -m 0755 "$STATE_DIR/slurmd-$n"; done
    install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    setup_network
    write_etc

    if ! daemon_pid munged "$MUNGE_PID" >/dev/null; then
        say "starting munged ($MUNGE_SOCKET)"
        on_head runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" \
            --pid-file="$MUNGE_PID" --log-file=/var/log/munge/munged-two-node.log \
            --seed-file=/var/lib/munge/munged-two-node.seed \
            </dev/null >"$LOG_DIR/munged.stderr" 2>&1 || fail "munged did not start."
    fi
    munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET"; }
    wait_for "munge to answer" munge_ok

    if ! daemon_pid slurmctld "$CTLD_PID" >/dev/null; then
        say "starting slurmctld on head ($HEAD_ADDR)"
        # Its own UTS namespace: slurmctld runs only where the hostname is SlurmctldHost's.
        enter "$HEAD_NS" head slurmctld \
            </dev/null >"$LOG_DIR/slurmctld.stderr" 2>&1 || fail "slurmctld did not start."
    fi
    wait_for "slurmctld to answer (scontrol ping)" on_head scontrol ping
    for n in "${NODES[@]}"; do
        daemon_pid slurmd "$(slurmd_pid_file "$n")" >/dev/null && continue
        say "starting slurmd on $n ($(node_addr "$n"))"
        enter "$(node_ns "$n")" "$n" slurmd -N "$n" \
            </dev/null >"$LOG_DIR/slurmd-$n.stderr" 2>&1 || fail "slurmd on $n did not start."
    done

    until nodes_up; do
        now=$(date +%s)
        [ $(( now - t0 )) -lt "$timeout_s" ] || fail "nodes not up after ${timeout_s}s:" \
            "$(on_head sinfo -h -N -o '%N=%T' 2>/dev/null | tr '\n' ' ')"
        for n in "${NODES[@]}"; do
            state=$(on_head sinfo -h -N -n "$n" -o %T 2>/dev/null | head -n 1 || true)
            case "$state" in
                *\*) ;;
                down*|drain*)
                    if [ $(( now - last_resume )) -ge 3 ]; then
                        say "node $n is $state: resuming it"
                        on_head scontrol update nodename="$n" state=resume || true
                        last_resume=$now
                    fi ;;
            esac
        done
        sleep 0.5
    done
    say "SLURM is up in $(( $(date +%s) - t0 ))s: nodes ${NODES[*]} on ${SUBNET}.0/24," \
        "controller head; clients: bash slurm/two-node.sh exec sinfo"
}

# ---------------------------------------------------------------- stop
# kill_namespace NS: end every process left in NS (jobs, step daemons), TERM then KILL.
kill_namespace() {
    local ns=$1 pids
    ns_exists "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    say "ending the processes left in $ns: $pids"
    # shellcheck disable=SC2086  # one pid per word
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [ -n "${pids// /}" ] || return 0
        sleep 0.5
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
}

cmd_stop() {
    local wipe=0 ns job_ids job ctld
    while [ $# -gt 0 ]; do
        case "$1" in
            --wipe) wipe=1 ;;
            *) echo "two-node.sh stop: unknown option '$1' (valid: --wipe)" >&2; exit 2 ;;
        esac
        shift
    done
    need_root
    ctld=$(daemon_pid slurmctld "$CTLD_PID" || true)
    if [ -n "$ctld" ] && ns_exists "$HEAD_NS"; then
        if [ "$wipe" = 1 ]; then
            job_ids=$(on_head squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
            if [ -n "${job_ids// /}" ]; then
                say "cancelling jobs $job_ids"
                # shellcheck disable=SC2086
                on_head scancel $job_ids || true
            fi
        else
            # Their nodes stop with the cluster: requeue the running jobs (a moco3 run resumes
            # from its checkpoint at the next start), or cancel one that may not requeue,
            # rather than leave the controller believing they still run.
            job_ids=$(on_head squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null | tr '\n' ' ' \
                      || true)
            for job in $job_ids; do
                say "requeueing running job $job"
                on_head scontrol requeue "$job" 2>/dev/null || on_head scancel "$job" || true
            done
        fi
        say "scontrol shutdown"
        on_head scontrol shutdown >/dev/null 2>&1 || true
        for _ in $(seq 1 40); do
            pid_alive "$ctld" || break
            sleep 0.5
        done
    fi
    for n in "${NODES[@]}"; do stop_daemon slurmd "$(slurmd_pid_file "$n")"; done
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    for ns in $(namespaces); do
        kill_namespace "$ns"
        # Deleting a namespace deletes its interfaces: the bridge and both veth ends.
        if ns_exists "$ns"; then
            say "deleting namespace $ns"
            ip netns del "$ns"
        fi
        rm -rf "${NETNS_ETC:?}/$ns"
    done
    rmdir "$NETNS_ETC" 2>/dev/null || true  # only if nothing else put files there
    rm -rf "$RUN_DIR"
    if [ "$wipe" = 1 ]; then
        say "wiping the controller's and the nodes' state ($STATE_DIR)"
        rm -rf "$STATE_DIR"
    fi
    say "stopped."
}

# ---------------------------------------------------------------- main
case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    check) cmd_check ;;
    present)  # exit 0 when anything start left is there (what `slurm/stop.sh` asks)
        for ns in $(namespaces); do ns_exists "$ns" && exit 0; done
        [ -d "$RUN_DIR" ] ;;
    exec)
        shift
        [ $# -gt 0 ] || { echo "two-node.sh exec: name a command, e.g. sinfo" >&2; exit 2; }
        ns_exists "$HEAD_NS" || { echo "two-node.sh: the two-node cluster is not running:" \
                                       "start it with bash slurm/start.sh --nodes 2" >&2
                                  exit 1; }
        on_head "$@" ;;
    -h|--help|"") sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
                  [ -n "${1:-}" ] || exit 2 ;;
    *) echo "two-node.sh: unknown command '$1' (valid: start, stop, check, present, exec)" >&2; exit 2 ;;
esac
