#!/usr/bin/env bash
# Starts one launcher (launch/annotate.py, ...) as a multi-process JAX job:
# the same command in every process, with --multihost, so that
# jax.distributed.initialize() joins them (gmseg/parallel.py init_distributed)
# and the global batch is split over the devices of all processes.
#
#   launch/multihost.sh tpu NAME ZONE -- LAUNCHER [FLAGS...]
#       every worker (host) of the TPU VM slice NAME, over
#       `gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all`;
#       JAX detects the slice itself. The checkout must be at the same path
#       on every worker: $GMSEG_REMOTE_DIR (default gmseg, i.e. ~/gmseg).
#   launch/multihost.sh tpu-setup NAME ZONE
#       GMSEG_ACCEL=tpu bash launch/setup.sh on every worker of NAME.
#   launch/multihost.sh local N -- LAUNCHER [FLAGS...]
#       N processes on this machine, coordinator localhost:$GMSEG_PORT.
#       GMSEG_ONE_GPU_EACH=1 gives process i local GPU i (JAX_LOCAL_DEVICE_IDS).
#       Process 0 writes to this terminal; process i > 0 to
#       $GMSEG_LOG_DIR/process_i.log. When one process fails, the others are
#       stopped, and the script exits with the first failure's status.
#   launch/multihost.sh process HOST:PORT N I -- LAUNCHER [FLAGS...]
#       process I of N of a job spread over machines (e.g. GPU nodes): run it
#       on each machine with its own I; HOST is process 0's machine.
#       Under SLURM or Open MPI plain `--multihost` suffices (JAX detects them).
#
# LAUNCHER is a launch/*.py that takes --multihost. Environment:
#   GMSEG_PYTHON        interpreter (default .venv/bin/python)
#   GMSEG_PORT          coordinator port for `local` (default: a random free one)
#   GMSEG_LOG_DIR       where `local` puts process_i.log (default: a new temp dir)
#   GMSEG_REMOTE_DIR    checkout on the TPU workers (default gmseg)
#   GMSEG_GCLOUD_FLAGS  extra gcloud flags, e.g. "--project=my-project"
#   GMSEG_LAUNCH_DRY_RUN=1  print the commands instead of running them
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${GMSEG_PYTHON:-.venv/bin/python}
DRY=${GMSEG_LAUNCH_DRY_RUN:-0}

die() {
  echo "error: $*" >&2
  exit 1
}

usage() {
  die "usage: launch/multihost.sh tpu NAME ZONE -- LAUNCHER [FLAGS...] |" \
      "tpu-setup NAME ZONE | local N -- LAUNCHER [FLAGS...] |" \
      "process HOST:PORT N I -- LAUNCHER [FLAGS...] (see the comments at its top)."
}

# Checks that "$@" (after --) names a launcher that takes --multihost.
check_launcher() {
  [ $# -ge 1 ] || usage
  [ -f "$1" ] || die "launcher $1 not found (give a path like launch/annotate.py)."
  grep -q '"multihost"' "$1" ||
    die "$1 has no --multihost flag, so it cannot join a multi-process job; use a" \
        "launcher that has one (grep -l '\"multihost\"' launch/*.py)."
  case " $* " in
    *" --multihost "*|*" --multihost="*|*" --coordinator_address"*|*" --num_processes"*|*" --process_id"*)
      die "leave out --multihost/--coordinator_address/--num_processes/--process_id:" \
          "launch/multihost.sh adds them." ;;
  esac
}

# Prints a command (arguments with spaces or specials single-quoted) under
# dry run, else runs it.
run() {
  if [ "$DRY" = 1 ]; then
    local arg out=()
    for arg in "$@"; do
      if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

gcloud_all() {  # NAME ZONE COMMAND: COMMAND on every worker of NAME
  local flags=()
  read -r -a flags <<< "${GMSEG_GCLOUD_FLAGS:-}"
  run gcloud compute tpus tpu-vm ssh "$1" "--zone=$2" --worker=all "${flags[@]}" \
    "--command=$3"
}

mode=${1:-}
[ $# -ge 1 ] && shift
case "$mode" in
  tpu)
    [ $# -ge 4 ] && [ "$3" = "--" ] || usage
    name=$1 zone=$2
    shift 3
    check_launcher "$@"
    remote=$(printf '%q ' cd "${GMSEG_REMOTE_DIR:-gmseg}")"&& "$(printf '%q ' \
      .venv/bin/python "$@" --multihost)
    gcloud_all "$name" "$zone" "${remote% }"
    ;;
  tpu-setup)
    [ $# -eq 2 ] || usage
    gcloud_all "$1" "$2" "$(printf '%q ' cd "${GMSEG_REMOTE_DIR:-gmseg}")&& GMSEG_ACCEL=tpu bash launch/setup.sh"
    ;;
  process)
    [ $# -ge 5 ] && [ "$4" = "--" ] || usage
    [[ "$1" =~ ^[^:]+:[0-9]+$ ]] || die "coordinator $1 is not HOST:PORT (process 0's machine)."
    is_count "$2" || die "process count $2 is not a positive integer."
    [[ "$3" =~ ^[0-9]+$ ]] && [ "$3" -lt "$2" ] || die "process id $3 is not in 0..$(($2 - 1))."
    coordinator=$1 count=$2 id=$3
    shift 4
    check_launcher "$@"
    run "$PYTHON" "$@" --multihost "--coordinator_address=$coordinator" \
      "--num_processes=$count" "--process_id=$id"
    ;;
  local)
    [ $# -ge 3 ] && [ "$2" = "--" ] || usage
    is_count "$1" || die "process count $1 is not a positive integer."
    count=$1
    shift 2
    check_launcher "$@"
    port=${GMSEG_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
    logs=${GMSEG_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gmseg_multihost.XXXXXX")}
    pids=()
    for ((i = 0; i < count; i++)); do
      cmd=("$PYTHON" "$@" --multihost "--coordinator_address=localhost:$port"
           "--num_processes=$count" "--process_id=$i")
      if [ "${GMSEG_ONE_GPU_EACH:-0}" = 1 ]; then
        cmd=(env "JAX_LOCAL_DEVICE_IDS=$i" "${cmd[@]}")
      fi
      if [ "$DRY" = 1 ]; then
        run "${cmd[@]}"
      elif [ "$i" = 0 ]; then
        "${cmd[@]}" &
        pids+=($!)
      else
        mkdir -p "$logs"
        echo "process $i: output in $logs/process_$i.log" >&2
        "${cmd[@]}" > "$logs/process_$i.log" 2>&1 &
        pids+=($!)
      fi
    done
    [ "$DRY" = 1 ] && exit 0
    # The first process to end decides: a failure stops the rest (they would
    # otherwise wait for it in a collective until JAX's timeout).
    for ((left = count; left > 0; left--)); do
      status=0
      wait -n || status=$?
      if [ "$status" != 0 ]; then
        echo "error: a process of the job failed (exit $status); stopping the others." >&2
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
        exit "$status"
      fi
    done
    exit 0
    ;;
  *)
    usage
    ;;
esac
