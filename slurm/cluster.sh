#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests and for trying `launch --slurm`.
#
#   bash slurm/cluster.sh up      install (Debian, root) and start munged, slurmctld and two slurmd (n1, n2);
#                                 waits until both nodes are idle
#   bash slurm/cluster.sh down    stop exactly the daemons `up` started (by their pid files)
#   bash slurm/cluster.sh status  sinfo
#
# Then: export SLURM_CONF=$LAUNCHER_SLURM_DIR/slurm.conf (default /tmp/launcher-slurm/slurm.conf).
# Settings that make submit -> signal -> requeue -> rerun take seconds (cred_expire=5, sched_interval=1,
# KillWait) and the facts behind them: ../shared/notes/local-slurm.md and slurm/README.md.
set -euo pipefail

DIR=${LAUNCHER_SLURM_DIR:-/tmp/launcher-slurm}
CTLD_PORT=${LAUNCHER_SLURM_PORT:-16817}
CONF="$DIR/slurm.conf"
NODES=(n1 n2)
ADDRS=(127.0.1.1 127.0.1.2)

say() { echo "slurm/cluster.sh: $*" >&2; }

install_packages() {
  local missing=""
  for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "error: missing packages:$missing; install them as root (apt-get install$missing)"
    exit 2
  fi
  say "apt-get install$missing"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  local host
  host=$(hostname)
  cat >"$CONF" <<EOF
# Written by slurm/cluster.sh: two nodes (n1, n2) on this one machine.
ClusterName=launcher-test
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge/munge.socket,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=${DIR}/ctld
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd-%n.pid
SlurmctldLogFile=${DIR}/slurmctld.log
SlurmdLogFile=${DIR}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
KillWait=5
MinJobAge=600
ReturnToService=2
NodeName=${NODES[0]} NodeHostname=${host} NodeAddr=${ADDRS[0]} Port=$((CTLD_PORT + 1)) CPUs=2 State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=${host} NodeAddr=${ADDRS[1]} Port=$((CTLD_PORT + 2)) CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

up() {
  install_packages
  mkdir -p "$DIR/ctld" "$DIR/munge" "$DIR/spool/${NODES[0]}" "$DIR/spool/${NODES[1]}"
  chown munge: "$DIR/munge"
  chmod 0755 "$DIR" "$DIR/munge"
  # the first node of an allocation is the rendezvous address: the node names must resolve
  for i in 0 1; do
    grep -qE "^${ADDRS[$i]}[[:space:]]+${NODES[$i]}\$" /etc/hosts || echo "${ADDRS[$i]} ${NODES[$i]}" >>/etc/hosts
  done
  write_conf
  if ! alive "$DIR/munge/munged.pid"; then
    runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  fi
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  for n in "${NODES[@]}"; do
    alive "$DIR/slurmd-$n.pid" || slurmd -f "$CONF" -N "$n"
  done
  export SLURM_CONF="$CONF"
  for _ in $(seq 1 100); do
    if [ "$(sinfo -h -o '%t' 2>/dev/null | sort -u | tr -d '\n')" = "idle" ]; then
      say "up: nodes ${NODES[*]} idle; export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.2
  done
  say "error: the nodes did not become idle within 20 s; logs in $DIR"
  sinfo >&2 || true
  exit 1
}

down() {
  local pidfile
  for pidfile in "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$pidfile" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) SLURM_CONF="$CONF" sinfo ;;
  *) echo "usage: bash slurm/cluster.sh up|down|status" >&2; exit 2 ;;
esac
