#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, to run profiles/slurm against without a cluster:
#
#   workflow/scripts/local-slurm.sh start|stop|status DIR
#
# start installs munge + slurmctld + slurmd + slurm-client with apt when missing, writes slurm.conf and
# gres.conf (2 fake GPUs) into DIR/etc, links them from /etc/slurm, and runs munged, slurmctld and
# slurmd in the background until the node is idle in `sinfo`. stop cancels the jobs, ends the daemons
# by the PIDs start recorded and restores /etc/slurm. Both are idempotent. Needs root (slurmd runs
# jobs as any user) and a Debian-like system for the install step.
#
# No accounting daemon: `sacct` does not work here, so profiles/slurm checks job status with squeue
# (jobs stay visible to squeue for MinJobAge=1800 s).
set -euo pipefail
# The daemons install into /usr/sbin, which a plain user's PATH (or CI's) may lack.
export PATH="$PATH:/usr/sbin:/sbin"

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
die() { echo "local-slurm: $*" >&2; exit 1; }
(($# == 2)) || usage
action=$1
mkdir -p "$2"
DIR=$(realpath "$2")
HOST=$(hostname -s)
CONFS=(slurm.conf gres.conf)
PIDS=$DIR/run/pids          # lines "name pid", written by start, read by stop/status

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
recorded_pid() { [[ -f $PIDS ]] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" || true; }
node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1 || true; }

install_packages() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install them another way"
  echo "local-slurm: installing ${missing[*]} with apt-get"
  # Containers have no init system: keep the packages' postinst from trying to start the services.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
  fi
  local log=$DIR/log/apt.log ok=1
  mkdir -p "$DIR/log"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 || ok=
  [[ -z $added_policy ]] || rm -f "$policy"
  [[ -n $ok ]] || { tail -n 15 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
}

write_configs() {
  # Topology exactly as slurmd detects it (more than that puts the node in INVAL); 90 % of its memory.
  local hw mem
  hw=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')
  mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$hw")
  hw=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 9 / 10))/" <<<"$hw")
  mkdir -p "$DIR"/{etc,state,spool,log,run,fakegpu}
  # Fake GPUs: gres.conf wants character devices; symlinks to /dev/null pass its check.
  ln -sfn /dev/null "$DIR/fakegpu/gpu0"
  ln -sfn /dev/null "$DIR/fakegpu/gpu1"
  cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$DIR/fakegpu/gpu[0-1]
EOF
  cat >"$DIR/etc/slurm.conf" <<EOF
# Written by local-slurm.sh: one node, no accounting daemon, no cgroup plugins (so no systemd needed).
ClusterName=localslurm
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job with no --mem takes the node's whole memory and the rest queue behind it.
DefMemPerCPU=1024
# Finished jobs stay visible to 'squeue --states=all' this long: the squeue status check, and tests
# that list a run's jobs, rely on it. Slurm's default of 300 s lost the first jobs of a time-limit
# test that took 465 s on a loaded machine.
MinJobAge=1800
ReturnToService=2
# Reject at submission what the node can never run (more CPUs than it has), instead of pending forever.
EnforcePartLimits=ALL
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 $hw Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  touch "$DIR/.local-slurm"
}

# Srun inside a job runs with SLURM_CONF stripped (Snakemake's jobstep plugin does that), so the
# config must be at the default path. Keep a foreign file as *.orig-local-slurm; stop puts it back.
link_configs() {
  mkdir -p /etc/slurm
  local c dst
  for c in "${CONFS[@]}"; do
    dst=/etc/slurm/$c
    if [[ -e $dst || -L $dst ]] && [[ $(readlink "$dst" || true) != "$DIR/etc/$c" ]]; then
      if ours "$dst" || [[ -e $dst.orig-local-slurm ]]; then
        rm -f "$dst"
      else
        mv "$dst" "$dst.orig-local-slurm"
      fi
    fi
    ln -sfn "$DIR/etc/$c" "$dst"
  done
}

# A link left by an earlier local-slurm run (its directory carries the marker, or is gone).
ours() {
  local target
  [[ -L $1 ]] || return 1
  target=$(readlink "$1")
  [[ ! -e $target || -e $(dirname "$(dirname "$target")")/.local-slurm ]]
}

unlink_configs() {
  local c dst
  for c in "${CONFS[@]}"; do
    dst=/etc/slurm/$c
    [[ $(readlink "$dst" 2>/dev/null || true) == "$DIR/etc/$c" ]] || continue
    rm -f "$dst"
    [[ ! -e $dst.orig-local-slurm ]] || mv "$dst.orig-local-slurm" "$dst"
  done
}

start_munge() {
  # A munged that already answers (a system one, or ours from before) is reused and not recorded.
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  # setsid and setpriv exec in place, so $! is munged itself.
  setsid setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged --foreground \
    </dev/null >>"$DIR/log/munged.out" 2>&1 &
  echo "munged $!" >>"$PIDS"
  local i
  for i in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not come up; $(tail -n 5 "$DIR/log/munged.out" /var/log/munge/munged.log 2>/dev/null)"
}

start() {
  [[ $(id -u) -eq 0 ]] || die "start needs root (slurmd runs as root and the config goes to /etc/slurm)"
  if [[ -n $(running) ]]; then
    if [[ $(running) == *"slurmctld slurmd" && $(node_state) =~ ^(idle|mix|alloc) ]]; then
      echo "local-slurm: already running in $DIR"
      return 0
    fi
    stop  # half up: start over
  fi
  install_packages
  # Another cluster on this machine would fight over the ports and /etc/slurm.
  local other
  other=$({ pgrep -x slurmctld; pgrep -x slurmd; } | head -n1 || true)
  [[ -z $other ]] || die "a slurm daemon not started from $DIR is running (pid $other, config" \
    "$(readlink -f /etc/slurm/slurm.conf || true)); stop it first, e.g. with: $0 stop <its DIR>"
  # A fresh cluster every time: a drained or INVAL node would otherwise stay so across restarts.
  rm -rf "$DIR"/{state,spool,run}
  write_configs
  link_configs
  : >"$PIDS"
  start_munge
  setsid slurmctld -D </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$PIDS"
  setsid slurmd -D -N "$HOST" </dev/null >>"$DIR/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >>"$PIDS"
  local i state
  for i in $(seq 300); do
    state=$(node_state)
    case $state in
      idle) echo "local-slurm: node $HOST idle in partition debug (logs in $DIR/log)"; return 0 ;;
      inval* | drain* | down*) [[ $i -lt 50 ]] || break ;;  # down/unknown is normal for a moment
    esac
    [[ -n $(running) ]] || break
    sleep 0.1
  done
  local reason
  reason=$(sinfo -h -R -o ': %E' 2>/dev/null || true)
  echo "local-slurm: node $HOST not idle after $((i / 10)) s (state '${state:-none}'$reason)" >&2
  # The daemons log to DIR/log/*.log; *.out has what they printed before their log was open.
  tail -n 8 "$DIR"/log/*.log "$DIR"/log/munged.out >&2 2>/dev/null || true
  stop
  exit 1
}

# Names of the recorded daemons still alive, in start order.
running() {
  local n names=()
  for n in munged slurmctld slurmd; do alive "$(recorded_pid $n)" && names+=("$n"); done
  echo "${names[*]:-}"
}

# SIGTERM the live PIDs among the arguments, SIGKILL those still there after 5 s.
terminate() {
  local pid pids=() i
  for pid in "$@"; do alive "$pid" && pids+=("$pid"); done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 50); do
    local left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

stop() {
  local i
  if alive "$(recorded_pid slurmctld)"; then
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for i in $(seq 50); do
      [[ -z $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  # The slurm daemons together (each takes a second or two), munged last: they talk through it.
  terminate "$(recorded_pid slurmd)" "$(recorded_pid slurmctld)"
  terminate "$(recorded_pid munged)"
  rm -f "$PIDS"
  unlink_configs
  echo "local-slurm: stopped ($DIR)"
}

status() {
  local n
  for n in munged slurmctld slurmd; do
    if alive "$(recorded_pid $n)"; then
      echo "$n: running (pid $(recorded_pid $n))"
    else
      echo "$n: not running"
    fi
  done
  [[ $(running) == *"slurmctld slurmd"* ]] || return 3
  sinfo -N -o '%N %P %t %c %m %G'
  [[ $(node_state) =~ ^(idle|mix|alloc) ]]
}

case $action in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
