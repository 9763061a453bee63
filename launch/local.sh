#!/usr/bin/env bash
# launch/local.sh CONFIG [ACTORS] [--set key=value]...
#
# Starts a broker, a learner (crl-learner rl) and ACTORS actors (default:
# actor.count of the config) on this machine. Logs go to
# RUN_DIR/NAME/logs/{broker,learner,actor-N}.log. Everything is stopped
# cleanly on Ctrl-C, or when the learner finishes (its exit status is this
# script's). More actors can join later by hand:
#   build/bin/crl-actor --config CONFIG --id extra-1
set -uo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
if [ $# -lt 1 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then usage; exit 0; fi
cfg=$1; shift
actors=""
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then actors=$1; shift; fi
extra=("$@")
[ -f "$cfg" ] || { echo "local.sh: config file '$cfg' not found" >&2; exit 2; }

here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CRL_BIN_DIR:-$here/build/bin}
for b in crl-broker crl-learner crl-actor; do
  [ -x "$BIN/$b" ] || { echo "local.sh: $BIN/$b missing — run 'make' first" >&2; exit 2; }
done

get() { "$BIN/crl-learner" config --config "$cfg" "${extra[@]}" --get "$1"; }
name=$(get run.name) || exit 2
rundir=$(get run.dir)/$name
[ -n "$actors" ] || actors=$(get actor.count)
logs=$rundir/logs
mkdir -p "$logs" || { echo "local.sh: cannot create $logs" >&2; exit 1; }

pids=()
names=()
start() { # start NAME CMD...
  local n=$1; shift
  "$@" >>"$logs/$n.log" 2>&1 &
  pids+=($!)
  names+=("$n")
  echo "local.sh: started $n (pid $!), log $logs/$n.log"
}

stopping=0
stop_all() {
  [ $stopping = 1 ] && return
  stopping=1
  echo "local.sh: stopping ${#pids[@]} processes"
  # Actors first (they say goodbye), then learner, then broker.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null; done
  local deadline=$((SECONDS + 15))
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then
      echo "local.sh: pid $p did not stop in 15 s, killing it" >&2
      kill -KILL "$p" 2>/dev/null
    fi
  done
  wait 2>/dev/null
}
trap 'stop_all; exit 130' INT TERM

start broker "$BIN/crl-broker" --config "$cfg" "${extra[@]}"
start learner "$BIN/crl-learner" rl --config "$cfg" "${extra[@]}"
learner_pid=${pids[1]}
for ((a=0; a<actors; a++)); do
  start "actor-$a" "$BIN/crl-actor" --config "$cfg" "${extra[@]}" --id "$name-actor-$a"
done
echo "local.sh: run '$name' in $rundir; follow it with: tail -f $logs/learner.log"

# The learner's progress goes to its log; show it here as it comes.
tail -n +1 -f "$logs/learner.log" --pid="$learner_pid" &
tail_pid=$!
wait "$learner_pid"
rc=$?
kill "$tail_pid" 2>/dev/null
# If the broker or an actor died early, say so.
for i in "${!pids[@]}"; do
  p=${pids[$i]}
  if [ "$p" != "$learner_pid" ] && ! kill -0 "$p" 2>/dev/null; then
    wait "$p"; st=$?
    echo "local.sh: ${names[$i]} had already exited (status $st); see $logs/${names[$i]}.log" >&2
  fi
done
stop_all
echo "local.sh: learner exited with status $rc"
exit $rc
