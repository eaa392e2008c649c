#!/usr/bin/env bash
# The project's own SLURM cluster on this one machine, for tests and CI: two nodes (two slurmd,
# n1 and n2, both 127.0.0.1) under one slurmctld, with accounting (slurmdbd on a private mariadbd)
# because submitit needs sacct to see job states.  Runs as root, without systemd.
#
#   slurm/local_cluster.sh start    install what is missing, write the config, start the daemons,
#                                   return once both nodes are idle (a no-op when already up)
#   slurm/local_cluster.sh stop     stop the daemons this script started (by their pid files)
#   slurm/local_cluster.sh status   print the nodes; exit 0 only when both respond
#
# State (daemon logs, spool, database, pid files) lives under $STATE; the config is written to
# /etc/slurm, where sbatch/scontrol/sacct look for it. See slurm/README.md for the reasons.
set -euo pipefail

STATE=/var/tmp/blt-local-slurm
CONF_DIR=/etc/slurm
CLUSTER=bltlocal
NODES=(n1 n2)
PORTS=(17001 17002)
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core mariadb-client-core)
MYSQL_SOCKET=/run/mysqld/mysqld.sock   # the client library's default: slurmdbd finds it unconfigured

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A pid file names a live process (zombies of dead daemons linger here, so look at the state).
alive() {
  local pidfile=$1 pid stat
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ -n "$stat" && "$stat" != Z* ]]
}

nodes_ready() {  # both nodes respond and are usable (idle, or running jobs)
  local states
  states=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  for n in "${NODES[@]}"; do
    grep -Eq "^$n (idle|allocated|mixed|completing)\$" <<<"$states" || return 1
  done
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root to install them"
  log "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_hosts() {
  # Multi-node jobs use the first node's name as the rendezvous address, so it must resolve.
  for n in "${NODES[@]}"; do
    grep -Eq "^127\.0\.0\.1[[:space:]].*\b$n\b" /etc/hosts || echo "127.0.0.1 $n" >>/etc/hosts
  done
}

write_config() {
  local host cpus mem
  host=$(hostname)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem / ${#NODES[@]} ))
  mkdir -p "$CONF_DIR" "$STATE"/{ctld,spool,log,run,mysql}
  {
    cat <<EOF
# Written by slurm/local_cluster.sh: two nodes on $host for tests. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job becomes eligible again after the credential lifetime: keep it short for tests.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmdSpoolDir=$STATE/spool/%n
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPort=16817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=2
KillWait=10
MinJobAge=300
EOF
    for i in "${!NODES[@]}"; do
      echo "NodeName=${NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[$i]} CPUs=1 RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=local Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES OverSubscribe=YES MaxTime=INFINITE State=UP"
  } >"$CONF_DIR/slurm.conf"
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by slurm/local_cluster.sh.
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
  if alive /run/munge/munged.pid; then return 0; fi
  # munged refuses to run unless its directories belong to its own user.
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  runuser -u munge -- munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

start_mariadb() {
  local pidfile=$STATE/run/mariadbd.pid
  if alive "$pidfile"; then return 0; fi
  mkdir -p /run/mysqld
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
  fi
  # No TCP: the database serves only slurmdbd, over the default unix socket.
  setsid mariadbd --user=root --datadir="$STATE/mysql" --socket="$MYSQL_SOCKET" --pid-file="$pidfile" \
    --skip-networking --log-error="$STATE/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 100); do
    [ -S "$MYSQL_SOCKET" ] && mariadb -u root -e 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "mariadbd did not come up (see $STATE/log/mariadbd.log)"
}

start_slurmdbd() {
  if alive "$STATE/run/slurmdbd.pid"; then return 0; fi
  slurmdbd
  for _ in $(seq 100); do
    timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.2
  done
  timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $STATE/log/slurmdbd.log)"
  timeout 10 sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" ||
    timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurm() {
  alive "$STATE/run/slurmctld.pid" || slurmctld
  for i in "${!NODES[@]}"; do
    alive "$STATE/run/slurmd-${NODES[$i]}.pid" || slurmd -N "${NODES[$i]}"
  done
}

cmd_start() {
  if nodes_ready && alive "$STATE/run/slurmdbd.pid"; then
    log "already running"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "start needs root (it installs packages and runs the daemons as root)"
  install_packages
  ensure_hosts
  write_config
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  for _ in $(seq 150); do
    nodes_ready && { log "nodes ${NODES[*]} ready"; return 0; }
    # Nodes left DOWN by an unclean stop come back once told to resume.
    timeout 5 scontrol update nodename="$(IFS=,; echo "${NODES[*]}")" state=resume >/dev/null 2>&1 || true
    sleep 0.2
  done
  sinfo -N >&2 || true
  die "nodes did not become idle within 30 s (see $STATE/log/)"
}

cmd_stop() {
  local pidfiles=()
  for n in "${NODES[@]}"; do pidfiles+=("$STATE/run/slurmd-$n.pid"); done
  pidfiles+=("$STATE/run/slurmctld.pid" "$STATE/run/slurmdbd.pid" "$STATE/run/mariadbd.pid" /run/munge/munged.pid)
  for f in "${pidfiles[@]}"; do
    if alive "$f"; then
      local pid
      pid=$(cat "$f")
      kill "$pid"
      for _ in $(seq 50); do alive "$f" || break; sleep 0.2; done
      alive "$f" && kill -9 "$pid"
    fi
  done
  log "stopped"
}

cmd_status() {
  timeout 10 sinfo -N 2>/dev/null || { log "slurmctld does not answer"; return 1; }
  nodes_ready
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
