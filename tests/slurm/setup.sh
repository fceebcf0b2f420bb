#!/usr/bin/env bash
# A single-node SLURM "cluster" (munge + slurmctld + slurmd, and by default slurmdbd on MariaDB so that sacct
# works) for the workflow's SLURM test (tests/test_slurm.py). Debian 12 (slurm-wlm 22.05), root, no systemd or
# cgroups needed: every daemon is started directly and stopped by its pid file.
#
# Usage:  sudo bash tests/slurm/setup.sh [start|stop|status|purge]
#   start   install the packages if missing, write the configs, start what is not running (idempotent; a
#           second start takes about a second and restarts slurmctld/slurmd only when slurm.conf changed)
#   stop    stop the daemons this script started (munged/mariadbd only if it started them); state is kept
#   status  pid of each daemon, and sinfo
#   purge   stop, then remove the state dir (database included) and the generated /etc/slurm files
#
# Environment:
#   HEADATTR_SLURM_STATE=/var/lib/headattr-slurm-ci   state, logs, pid files, the MariaDB datadir
#   HEADATTR_SLURM_ACCOUNTING=slurmdbd|none           slurmdbd (default): sacct works, as on real clusters.
#                        none: no accounting; the snakemake SLURM plugin then needs `slurm-status-command: squeue`
#   HEADATTR_SLURM_FAKE_GPUS=N                        N fake gres/gpu on the node (plain files), to test gpu requests
#   HEADATTR_SLURM_MEM_MB=M                           the node's RealMemory (default: MemTotal - 2 GiB)
#   HEADATTR_SLURM_DB_PORT=3307                       TCP port of the private MariaDB (localhost only)
#   HEADATTR_SLURM_FORCE=1                            overwrite an /etc/slurm/slurm.conf this script did not write
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ACTION="${1:-start}"
ACCT="${HEADATTR_SLURM_ACCOUNTING:-slurmdbd}"
STATE="${HEADATTR_SLURM_STATE:-/var/lib/headattr-slurm-ci}"
DBPORT="${HEADATTR_SLURM_DB_PORT:-3307}"
NGPU="${HEADATTR_SLURM_FAKE_GPUS:-0}"
CLUSTER=headattrci
HOST="$(hostname -s)"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
GRESCONF=/etc/slurm/gres.conf
MARKER="headattr-slurm-ci"
DBRUN="$STATE/mysql-run" # mariadbd runs as mysql: its socket, pid file and log go here
DBSOCK="$DBRUN/mysqld.sock"
DBPID="$DBRUN/mariadb.pid"

log() { echo "[headattr-slurm-ci $(date +%T)] $*"; }
die() { echo "setup.sh: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root"
case "$ACCT" in slurmdbd | none) ;; *) die "HEADATTR_SLURM_ACCOUNTING must be 'slurmdbd' or 'none'" ;; esac

pid_alive() { # pidfile
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() { # name pidfile
    if pid_alive "$2"; then
        local pid
        pid="$(cat "$2")"
        log "stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$2"
}

ours() { # file: written by this script (or absent)?
    [[ ! -e "$1" ]] || grep -q "$MARKER" "$1"
}

wait_for() { # tries(0.1 s each) command...
    local n="$1"
    shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

do_stop() {
    if pid_alive "$STATE/slurmctld.pid"; then # cancel what is left on this test cluster, so no job outlives it
        jobs="$(squeue -h -o %i 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # shellcheck disable=SC2016
            wait_for 100 bash -c '[[ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ]]' || true
        fi
    fi
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    stop_pidfile slurmdbd "$STATE/slurmdbd.pid"
    stop_pidfile mariadbd "$DBPID"
    if [[ -e "$STATE/started-munged" ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$STATE/started-munged"
    fi
}

case "$ACTION" in
stop)
    [[ -d "$STATE" ]] && do_stop
    exit 0
    ;;
purge)
    [[ -d "$STATE" ]] && do_stop
    for f in "$CONF" "$DBDCONF" "$GRESCONF"; do
        if [[ -e "$f" ]] && ours "$f"; then rm -f "$f"; fi
    done
    rm -rf "$STATE"
    log "purged $STATE"
    exit 0
    ;;
status)
    rc=0
    for p in /run/munge/munged.pid "$DBPID" "$STATE"/{slurmdbd,slurmctld,slurmd}.pid; do
        if pid_alive "$p"; then echo "$p: running ($(cat "$p"))"; else
            echo "$p: not running"
            [[ "$p" == */slurmctld.pid || "$p" == */slurmd.pid ]] && rc=1
        fi
    done
    if ((rc == 0)); then sinfo 2>&1 || rc=1; fi # sinfo would wait MessageTimeout for a stopped slurmctld
    exit $rc
    ;;
start) ;;
*) die "usage: setup.sh [start|stop|status|purge]" ;;
esac

t0=$(date +%s)

if ! ours "$CONF" && [[ "${HEADATTR_SLURM_FORCE:-0}" != 1 ]]; then
    die "$CONF exists and was not written by this script (a real SLURM installation?); set HEADATTR_SLURM_FORCE=1 to overwrite it"
fi

# ---------------------------------------------------------------- packages
pkgs=(munge slurm-wlm slurm-client)
[[ "$ACCT" == "slurmdbd" ]] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # keep the packages' maintainer scripts from starting system services (mariadb, munge, slurm*)
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    # on a fresh machine the apt lists may be missing or stale: update and retry
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ((policy_added)); then rm -f /usr/sbin/policy-rc.d; fi
fi

mkdir -p "$STATE"/{log,slurmctld,slurmd} /etc/slurm

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pid_alive /run/munge/munged.pid; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/started-munged"
    wait_for 100 test -S /run/munge/munge.socket.2 || die "munged did not start"
fi
munge -n | unmunge >/dev/null || die "munge self-test failed"

# ---------------------------------------------------------------- slurm.conf (+ gres.conf)
if [[ "$ACCT" == "slurmdbd" ]]; then
    JOBACCT=jobacct_gather/linux
    ACCTSTORAGE=accounting_storage/slurmdbd
    # job_comment: sacct shows the comment, where the snakemake plugin writes rule_<name>_wildcards_<...>
    ACCTEXTRA="AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment"
else
    JOBACCT=jobacct_gather/none
    ACCTSTORAGE=accounting_storage/none
    ACCTEXTRA=""
fi

CPUS="$(nproc)"
if ((NGPU > 0)); then
    GRESTYPES="GresTypes=gpu"
    [[ "$ACCT" == "slurmdbd" ]] && GRESTYPES="$GRESTYPES
AccountingStorageTRES=gres/gpu"
    NODEGRES="Gres=gpu:$NGPU"
    {
        echo "# $MARKER: fake GPUs (File= must exist, a plain file is enough)"
        echo "AutoDetect=off"
        for i in $(seq 0 $((NGPU - 1))); do
            touch "$STATE/fakegpu$i"
            echo "NodeName=$HOST Name=gpu File=$STATE/fakegpu$i"
        done
    } >"$GRESCONF.new"
else
    GRESTYPES=""
    NODEGRES=""
    echo "# $MARKER: no gres" >"$GRESCONF.new"
fi
changed=0
if ! cmp -s "$GRESCONF.new" "$GRESCONF"; then
    mv "$GRESCONF.new" "$GRESCONF"
    changed=1
else
    rm -f "$GRESCONF.new"
fi

# RealMemory must not exceed what slurmd sees, else the node goes INVAL; leave 2 GiB to the system
MEM="${HEADATTR_SLURM_MEM_MB:-$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048))}"
CTLDPORT=6817
SLURMDPORT=6818
tmp="$(mktemp)"
sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
    -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@CTLDPORT@|$CTLDPORT|g" -e "s|@SLURMDPORT@|$SLURMDPORT|g" \
    -e "s|@NODEGRES@|$NODEGRES|g" -e "s|@JOBACCT@|$JOBACCT|g" -e "s|@ACCTSTORAGE@|$ACCTSTORAGE|g" \
    "$HERE/slurm.conf.in" |
    awk -v extra="$ACCTEXTRA" -v gres="$GRESTYPES" \
        '{ if ($0 == "@ACCTEXTRA@") print extra; else if ($0 == "@GRESTYPES@") print gres; else print }' >"$tmp"
if ! cmp -s "$tmp" "$CONF"; then
    install -m 0644 "$tmp" "$CONF"
    changed=1
fi
rm -f "$tmp"

# ---------------------------------------------------------------- MariaDB + slurmdbd
if [[ "$ACCT" == "slurmdbd" ]]; then
    # a private MariaDB instance (own datadir, socket and port) so a system database is never touched
    install -d -o mysql -g mysql "$STATE/mysql" "$DBRUN"
    if [[ ! -d "$STATE/mysql/mysql" ]]; then
        log "initialising the MariaDB datadir"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
    fi
    if ! pid_alive "$DBPID"; then
        log "starting mariadbd"
        nohup mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --pid-file="$DBPID" \
            --socket="$DBSOCK" --bind-address=127.0.0.1 --port="$DBPORT" --innodb-buffer-pool-size=64M \
            --skip-log-bin --log-error="$DBRUN/mariadb.log" >/dev/null 2>&1 &
        wait_for 300 mariadb-admin --socket="$DBSOCK" ping || die "mariadbd did not start (see $DBRUN/mariadb.log)"
        wait_for 50 test -s "$DBPID" || true
    fi
    mariadb --socket="$DBSOCK" <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# $MARKER (generated by tests/slurm/setup.sh)
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmci
EOF
    if ! cmp -s "$tmp" "$DBDCONF"; then
        install -m 0600 "$tmp" "$DBDCONF"
        stop_pidfile slurmdbd "$STATE/slurmdbd.pid"
    fi
    rm -f "$tmp"
    if ! pid_alive "$STATE/slurmdbd.pid"; then
        log "starting slurmdbd"
        slurmdbd
        wait_for 200 bash -c 'echo >/dev/tcp/127.0.0.1/6819' || die "slurmdbd did not start (see $STATE/log/slurmdbd.log)"
    fi
    # the cluster, an account `ci` and root in it (the plugin validates slurm_account against sacctmgr)
    wait_for 100 sacctmgr -n -P list cluster || die "sacctmgr cannot reach slurmdbd"
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account ci Cluster="$CLUSTER" Description=ci Organization=ci >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root Account=ci DefaultAccount=ci >/dev/null 2>&1 || true
    sacctmgr -n -P list assoc user=root account=ci format=account | grep -qx ci || die "account ci was not registered"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if ((changed)); then # a changed config: restart (simplest and robust)
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
fi
if ! pid_alive "$STATE/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld
fi
if ! pid_alive "$STATE/slurmd.pid"; then
    log "starting slurmd"
    slurmd
fi

node_ok() {
    local s
    s="$(sinfo -h -N -o '%t' 2>/dev/null | head -1)"
    [[ "$s" == idle* || "$s" == mix* || "$s" == alloc* ]]
}
if ! wait_for 150 node_ok; then
    # a node can come back DOWN after an unclean restart
    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    wait_for 100 node_ok || {
        sinfo -N -l >&2 || true
        die "the node is not usable (see $STATE/log/slurmctld.log and slurmd.log)"
    }
fi
sinfo
log "ready after $(($(date +%s) - t0))s (accounting: $ACCT, state: $STATE, node: $CPUS CPUs, $MEM MB)"
