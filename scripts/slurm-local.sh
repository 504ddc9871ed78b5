#!/usr/bin/env bash
# A real, local, one-node Slurm cluster for tests, on Debian (bookworm) without systemd.
#
#   scripts/slurm-local.sh start    install slurm-wlm and munge if missing (apt-get), create a munge
#                                   key if missing, start munged, write a one-node slurm.conf, start
#                                   slurmctld and slurmd in the background, wait until the node is idle
#   scripts/slurm-local.sh stop     cancel all jobs, then stop the slurmd, slurmctld and munged
#                                   that `start` started
#   scripts/slurm-local.sh status   print sinfo and squeue
#
# The node is this host's short hostname, in partition `debug` (the default), at 127.0.0.1, with
# the machine's CPUs and its memory less some headroom. No cgroups (proctrack/linuxproc, task/none)
# and no accounting (no sacct). Jobs may requeue (JobRequeue=1, `scontrol requeue`) and finished
# jobs vanish from squeue/scontrol after MinJobAge (60 s).
#
# State, spool, logs, pid files and slurm.conf live in $SLURM_LOCAL_DIR (default /var/lib/pnn-slurm).
# The configuration is also linked as /etc/slurm/slurm.conf (where Slurm's commands look) unless
# another one is there already; then use `export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf`.
# `start` is idempotent: when the cluster is already up it says so and exits 0. Needs root (or
# passwordless sudo, through which it reruns itself).
#
# Exit status: 0 done; 1 unexpected failure; 2 usage; 3 cannot run here (not root and no sudo,
# the packages cannot be installed, or the daemons do not start or the node does not come up),
# with a one-line reason on stderr, so that a caller can tell "cannot run here" from a failure.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/lib/pnn-slurm}
CONF=$DIR/slurm.conf
MARK="# written by pnn scripts/slurm-local.sh"
PARTITION=debug
NODE=$(hostname -s)
START_TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
export SLURM_CONF=$CONF

cannot() { # cannot run here: one line on stderr, exit 3
  echo "slurm-local: cannot run here: $*" >&2
  exit 3
}

log_tails() {
  local f
  for f in "$DIR"/munge/munged.log "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log; do
    [[ -f $f ]] || continue
    echo "---- tail of $f" >&2
    tail -n 15 "$f" >&2
  done
}

running() { # running PID: the process exists and is not a zombie (pid 1 here may reap late)
  local stat
  stat=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

pid_alive() { # pid_alive PIDFILE: the daemon named like PIDFILE (munged.pid: munged) is running
  local pid
  [[ -s $1 ]] && pid=$(< "$1") && [[ $pid =~ ^[0-9]+$ ]] && running "$pid" &&
    [[ $(cat "/proc/$pid/comm" 2> /dev/null) == "$(basename "$1" .pid)" ]]
}

munge_ok() { munge -n 2> /dev/null | unmunge > /dev/null 2>&1; }

node_state() { sinfo -h -n "$NODE" -o '%T' 2> /dev/null | head -n 1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

install_packages() {
  local missing=() cmd
  for cmd in munged munge slurmctld slurmd sbatch; do
    command -v "$cmd" > /dev/null 2>&1 || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "slurm-local: installing slurm-wlm and munge (missing: ${missing[*]}); apt log: $DIR/log/apt.log"
  command -v apt-get > /dev/null || cannot "no apt-get to install slurm-wlm and munge"
  # No service may start from the packages' scripts (no init system here); Docker images have this.
  local policy_made=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  local ok=""
  "${apt[@]}" install slurm-wlm munge > "$DIR/log/apt.log" 2>&1 ||
    { "${apt[@]}" update >> "$DIR/log/apt.log" 2>&1 &&
      "${apt[@]}" install slurm-wlm munge >> "$DIR/log/apt.log" 2>&1; } && ok=1
  [[ -n $policy_made ]] && rm -f /usr/sbin/policy-rc.d
  if [[ -z $ok ]]; then
    tail -n 5 "$DIR/log/apt.log" >&2
    cannot "apt-get could not install slurm-wlm and munge (log: $DIR/log/apt.log)"
  fi
}

start_munge() {
  if munge_ok; then
    echo "slurm-local: munged already running"
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    echo "slurm-local: creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey > /dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  # /run/munge is made by systemd-tmpfiles elsewhere.
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  # munged daemonizes; its pid file in our folder marks it as ours for `stop`. (Its own folder:
  # munged, as user munge, replaces the pid file and writes the log.)
  mkdir -p "$DIR/munge"
  chown munge:munge "$DIR/munge"
  if ! runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" > "$DIR/log/munged.start" 2>&1; then
    cat "$DIR/log/munged.start" >&2
    cannot "munged does not start (log: $DIR/munge/munged.log)"
  fi
  for _ in $(seq 50); do
    munge_ok && return 0
    sleep 0.1
  done
  cannot "munged started but munge/unmunge fail (log: $DIR/munge/munged.log)"
}

write_conf() {
  local cpus mem_mb headroom
  cpus=$(nproc)
  mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
  headroom=$((mem_mb / 10 > 1024 ? mem_mb / 10 : 1024)) # 10%, at least 1 GiB
  mem_mb=$((mem_mb - headroom > 256 ? mem_mb - headroom : 256))
  cat > "$CONF.new" << EOF
$MARK: a one-node cluster for tests.
ClusterName=pnn-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true

StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Use the CPUs and memory written below even where the hardware reports another layout.
SlurmdParameters=config_overrides
ReturnToService=2

# Jobs may be requeued (sbatch --requeue, scontrol requeue); finished jobs go away after a minute.
# A requeued job waits cred_expire seconds (default 120) before it may start again, and a pending
# job starts at the next scheduling pass (sched_interval, default 60 s): both short here.
JobRequeue=1
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=2
MaxArraySize=100001
MaxJobCount=100000
MinJobAge=60
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.new" "$CONF"
  # Where Slurm's commands look without SLURM_CONF, unless someone else's configuration is there.
  mkdir -p /etc/slurm
  if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]] ||
    head -n 1 /etc/slurm/slurm.conf | grep -qF "$MARK"; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    echo "slurm-local: /etc/slurm/slurm.conf is not ours; use: export SLURM_CONF=$CONF" >&2
  fi
}

start_slurm() {
  if pid_alive "$DIR/run/slurmctld.pid"; then
    echo "slurm-local: slurmctld already running"
  else
    slurmctld -f "$CONF" > "$DIR/log/slurmctld.start" 2>&1 ||
      { cat "$DIR/log/slurmctld.start" >&2; log_tails; cannot "slurmctld does not start"; }
  fi
  if pid_alive "$DIR/run/slurmd.pid"; then
    echo "slurm-local: slurmd already running"
  else
    slurmd -f "$CONF" -N "$NODE" > "$DIR/log/slurmd.start" 2>&1 ||
      { cat "$DIR/log/slurmd.start" >&2; log_tails; cannot "slurmd does not start"; }
  fi
}

wait_ready() {
  local t0=$SECONDS state
  while ((SECONDS - t0 < START_TIMEOUT)); do
    state=$(node_state)
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] && return 0
    # A node left down or drained by an earlier run: bring it back.
    if [[ $state =~ ^(down|drained|draining) ]]; then
      scontrol update nodename="$NODE" state=resume > /dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  log_tails
  cannot "node $NODE not idle after ${START_TIMEOUT}s (state: ${state:-none}; logs in $DIR/log)"
}

cluster_up() { # (needs no root)
  command -v sinfo > /dev/null 2>&1 && munge_ok &&
    pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && node_ready
}

cmd_start() {
  if cluster_up; then
    echo "slurm-local: already up (node $NODE: $(node_state)); conf $CONF"
    return 0
  fi
  mkdir -p "$DIR"/{state,spool/slurmd,log,run}
  chmod 755 "$DIR"
  install_packages
  start_munge
  write_conf
  start_slurm
  wait_ready
  echo "slurm-local: up: node $NODE ($(nproc) CPUs), partition $PARTITION; conf $CONF, logs $DIR/log"
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local pid
  pid_alive "$2" || { rm -f "$2"; return 0; }
  pid=$(< "$2")
  echo "slurm-local: stopping $1 ($pid)"
  kill -TERM "$pid" 2> /dev/null || true
  for _ in $(seq 100); do
    running "$pid" || break
    sleep 0.1
  done
  if running "$pid"; then
    echo "slurm-local: $1 ($pid) did not stop in 10 s; killing it" >&2
    kill -KILL "$pid" 2> /dev/null || true
  fi
  rm -f "$2"
}

cmd_stop() {
  # Jobs outlive slurmd (their slurmstepd processes): cancel them all first, and wait a little.
  local jobs
  if pid_alive "$DIR/run/slurmctld.pid" && jobs=$(squeue -h -o '%A' 2> /dev/null) && [[ -n $jobs ]]; then
    echo "slurm-local: cancelling $(wc -w <<< "$jobs") job(s)"
    # shellcheck disable=SC2086
    scancel $jobs 2> /dev/null || true
    for _ in $(seq 100); do
      [[ -z $(squeue -h -o '%A' 2> /dev/null) ]] && break
      sleep 0.1
    done
  fi
  stop_pidfile slurmd "$DIR/run/slurmd.pid"
  stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
  stop_pidfile munged "$DIR/munge/munged.pid"
  echo "slurm-local: stopped"
}

cmd_status() {
  if ! command -v sinfo > /dev/null 2>&1; then
    echo "slurm-local: Slurm is not installed"
    return 1
  fi
  sinfo || return 1
  squeue
}

case ${1:-} in
  start | stop | status) ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
PATH=$PATH:/usr/sbin:/sbin
# Not root: rerun through sudo, unless there is nothing to do (status, or start when already up).
if [[ $(id -u) != 0 && $1 != status ]] && ! { [[ $1 == start ]] && cluster_up; }; then
  sudo -n true 2> /dev/null || cannot "needs root or passwordless sudo"
  exec sudo -n SLURM_LOCAL_DIR="$DIR" SLURM_LOCAL_TIMEOUT="$START_TIMEOUT" "$0" "$@"
fi
"cmd_$1"
