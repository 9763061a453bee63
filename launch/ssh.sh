#!/usr/bin/env bash
# launch/ssh.sh [OPTIONS] CONFIG HOSTS [--set key=value]...
#
# Starts a run on several machines over ssh. HOSTS is a file of lines
#   HOST [actors=N] [role=learner] [addr=ADDRESS] [key=PATH]
# ('#' starts a comment). The learner host (role=learner, else the first
# line) runs crl-broker and crl-learner rl, listening on all interfaces;
# every host runs N actors (default 1 on other hosts, 0 on the learner
# host) connecting to the learner host's ADDRESS (addr=, default: its HOST
# without user@). key= sets network.curve_client_key on that host.
#
# Options:
#   --relay            one relay broker per actor host; its actors fetch
#                      weights from it instead of from the learner host
#   --insecure         no CurveZMQ keys: adds --set network.insecure=true
#   --remote-dir DIR   the crl checkout on the remote hosts (default: the
#                      path of this checkout; nothing is copied)
#   --dry-run          print the commands, start nothing
# Logs: RUN_DIR/NAME/logs/HOST-ROLE-N.log on this machine (ssh output).
# Ctrl-C stops every remote process; when the learner ends, so does the
# run (its exit status is this script's).
# Environment: CRL_SSH (default "ssh -o BatchMode=yes"), CRL_BIN_DIR
# (binaries, this machine; remote: DIR/build/bin or CRL_REMOTE_BIN_DIR).
set -uo pipefail

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "ssh.sh: $*" >&2; exit 2; }

relay=0 insecure=0 dry=0 remote_dir="" pos=() extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --relay) relay=1 ;;
    --insecure) insecure=1 ;;
    --dry-run) dry=1 ;;
    --remote-dir) [ $# -ge 2 ] || die "--remote-dir needs a folder"; remote_dir=$2; shift ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --set) [ $# -ge 2 ] || die "--set needs key=value"; extra+=(--set "$2"); shift ;;
    --set=*) extra+=(--set "${1#*=}") ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) pos+=("$1") ;;
  esac
  shift
done
[ ${#pos[@]} -eq 2 ] || { usage >&2; exit 2; }
cfg=${pos[0]} hosts_file=${pos[1]}
[ -f "$cfg" ] || die "config file '$cfg' not found"
[ -f "$hosts_file" ] || die "hosts file '$hosts_file' not found"

here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CRL_BIN_DIR:-$here/build/bin}
[ -x "$BIN/crl-learner" ] || die "$BIN/crl-learner missing — run 'make' first"
read -r -a SSH <<<"${CRL_SSH:-ssh -o BatchMode=yes}"
rdir=${remote_dir:-$here}
if [ -n "${CRL_REMOTE_BIN_DIR:-}" ]; then rbin=$CRL_REMOTE_BIN_DIR
elif [ -n "$remote_dir" ]; then rbin=$remote_dir/build/bin
else rbin=$BIN; fi
# The config as the remote hosts see it: relative to the checkout when it
# lives inside it, else the same absolute path on every host.
cfg_abs=$(cd "$(dirname "$cfg")" && pwd)/$(basename "$cfg")
case $cfg_abs in "$here"/*) rcfg=${cfg_abs#"$here"/} ;; *) rcfg=$cfg_abs ;; esac

# ---- hosts file
hosts=() h_addr=() h_actors=() h_key=() learner_i=-1 lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r -a f <<<"$line"
  [ ${#f[@]} -gt 0 ] || continue
  h=${f[0]} addr=${f[0]##*@} n="" key="" is_learner=0
  for kv in "${f[@]:1}"; do
    case $kv in
      actors=*) n=${kv#*=}; [[ $n =~ ^[0-9]+$ ]] || die "$hosts_file:$lineno: actors= wants a count, got '$n'" ;;
      role=learner) is_learner=1 ;;
      role=*) die "$hosts_file:$lineno: unknown role '${kv#*=}' (only role=learner; other hosts run actors)" ;;
      addr=*) addr=${kv#*=} ;;
      key=*) key=${kv#*=} ;;
      *) die "$hosts_file:$lineno: unknown field '$kv' (actors=N, role=learner, addr=ADDRESS, key=PATH)" ;;
    esac
  done
  for o in "${hosts[@]}"; do [ "$o" != "$h" ] || die "$hosts_file:$lineno: host '$h' listed twice"; done
  if [ $is_learner = 1 ]; then
    [ $learner_i = -1 ] || die "$hosts_file:$lineno: a second role=learner host"
    learner_i=${#hosts[@]}
  fi
  hosts+=("$h"); h_addr+=("$addr"); h_actors+=("$n"); h_key+=("$key")
done <"$hosts_file"
[ ${#hosts[@]} -gt 0 ] || die "$hosts_file lists no hosts"
[ $learner_i != -1 ] || learner_i=0
for i in "${!hosts[@]}"; do
  [ -n "${h_actors[$i]}" ] || { [ "$i" = $learner_i ] && h_actors[$i]=0 || h_actors[$i]=1; }
done
L_ADDR=${h_addr[$learner_i]}

# ---- config, as the binaries read it
[ $insecure = 1 ] && extra+=(--set network.insecure=true)
mapfile -t v < <("$BIN/crl-learner" config --config "$cfg" "${extra[@]}" --get run.name --get run.dir \
    --get network.learner_work --get network.broker_announce --get network.broker_fetch \
    --get network.curve_keys_dir --get network.insecure) || exit 2
[ ${#v[@]} -eq 7 ] || die "cannot read the config (see the error above)"
name=${v[0]} rundir=${v[1]}/${v[0]} keys=${v[5]}
port() { # port KEY ENDPOINT
  [[ $2 =~ ^tcp://.*:([0-9]+)$ ]] || die "$1 is '$2': several machines need tcp://HOST:PORT with a fixed port"
  echo "${BASH_REMATCH[1]}"
}
P_WORK=$(port network.learner_work "${v[2]}") || exit 2
P_ANN=$(port network.broker_announce "${v[3]}") || exit 2
P_FETCH=$(port network.broker_fetch "${v[4]}") || exit 2
if [ -z "$keys" ] && [ "${v[6]}" != true ]; then
  die "no CurveZMQ keys: make them with '$BIN/crl-keygen --run-dir keys --actors N', copy them (see
launch/README-multi.md) and add --set network.curve_keys_dir=keys; or pass --insecure on a trusted network"
fi

# ---- the processes: role, host index, argv (one string, \x1f-separated)
roles=() on=() argvs=()
add() { # add ROLE HOST_INDEX ARG...
  local IFS=$'\x1f'
  roles+=("$1"); on+=("$2"); shift 2; argvs+=("$*")
}
keyset() { [ -z "${h_key[$1]}" ] || printf '%s\n' --set "network.curve_client_key=${h_key[$1]}"; }
mapfile -t lk < <(keyset $learner_i)
add broker $learner_i "$rbin/crl-broker" --config "$rcfg" "${extra[@]}" "${lk[@]}" \
    --set "network.broker_announce=tcp://*:$P_ANN" --set "network.broker_fetch=tcp://*:$P_FETCH"
add learner $learner_i "$rbin/crl-learner" rl --config "$rcfg" "${extra[@]}" "${lk[@]}" \
    --set "network.learner_work=tcp://*:$P_WORK"
for i in "${!hosts[@]}"; do
  mapfile -t hk < <(keyset "$i")
  use_relay=$relay
  [ "$i" != $learner_i ] && [ "${h_actors[$i]}" -gt 0 ] || use_relay=0
  wset=(--set "network.learner_work=tcp://$L_ADDR:$P_WORK")
  if [ $use_relay = 1 ]; then
    # Binds the config's (loopback) announce/fetch endpoints on its host.
    add relay "$i" "$rbin/crl-broker" --config "$rcfg" "${extra[@]}" "${hk[@]}" \
        --set "broker.upstream=tcp://$L_ADDR:$P_FETCH" --set "broker.upstream_announce=tcp://$L_ADDR:$P_ANN"
    bset=()
  else
    bset=(--set "network.broker_announce=tcp://$L_ADDR:$P_ANN" --set "network.broker_fetch=tcp://$L_ADDR:$P_FETCH")
  fi
  hn=${hosts[$i]##*@}
  for ((a = 0; a < ${h_actors[$i]}; a++)); do
    add actor "$i" "$rbin/crl-actor" --config "$rcfg" "${extra[@]}" "${hk[@]}" "${wset[@]}" "${bset[@]}" \
        --set "actor.id=$name-$hn-$a"
  done
done

# Every process's settings must pass the same checks the binaries make
# (e.g. non-loopback endpoints need keys or --insecure), before any start.
for k in "${!argvs[@]}"; do
  IFS=$'\x1f' read -r -a av <<<"${argvs[$k]}"
  sets=()
  for ((j = 0; j < ${#av[@]}; j++)); do
    [ "${av[$j]}" = --set ] && sets+=(--set "${av[$((j + 1))]}")
  done
  "$BIN/crl-learner" config --config "$cfg" "${sets[@]}" --get run.name >/dev/null ||
    die "the ${roles[$k]} on ${hosts[${on[$k]}]} would refuse its config (above)"
done

# Remote process group of process k (empty until its first log line).
pgid_of() { sed -n "s/^$tag-$1 \([0-9][0-9]*\)\$/\1/p" "${logf[$1]}" 2>/dev/null | head -n 1; }

stopping=0
# kill_remote SIGNAL: signals every remote group, one ssh per host, in
# parallel; actors first in the list (reverse start order).
kill_remote() {
  local sig=$1 k i
  declare -A groups=()
  for ((k = ${#pids[@]} - 1; k >= 0; k--)); do
    kill -0 "${pids[$k]}" 2>/dev/null || continue
    local g
    g=$(pgid_of "$k")
    if [ -z "$g" ]; then
      # Not started yet remotely: cutting its ssh is all we can do.
      kill -TERM "${pids[$k]}" 2>/dev/null; continue
    fi
    groups[${on[$k]}]+=" -$g"
  done
  local kp=()
  for i in "${!groups[@]}"; do
    "${SSH[@]}" "${hosts[$i]}" "bash -c 'kill -$sig --${groups[$i]}'" </dev/null >/dev/null 2>&1 &
    kp+=($!)
  done
  for p in "${kp[@]}"; do wait "$p" 2>/dev/null; done
}
stop_all() {
  [ $stopping = 1 ] && return
  stopping=1
  echo "ssh.sh: stopping ${#pids[@]} processes"
  kill_remote TERM
  local deadline=$((SECONDS + 15)) p
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  done
  local left=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
  if [ $left = 1 ]; then
    echo "ssh.sh: some processes did not stop in 15 s, killing them" >&2
    kill_remote KILL
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  fi
  wait 2>/dev/null
}
logs=$rundir/logs
[ $dry = 1 ] || mkdir -p "$logs" || die "cannot create $logs"
tag="crl-pgid-$$-$RANDOM"
pids=() names=() logf=()
declare -A count=()
# stop_all (below) is looked up when the trap fires: a Ctrl-C during the
# start-up stops what has started so far.
trap 'stop_all; exit 130' INT TERM
for k in "${!argvs[@]}"; do
  i=${on[$k]} h=${hosts[${on[$k]}]} role=${roles[$k]}
  hn=${h##*@}
  n=${count[$hn-$role]:-0}; count[$hn-$role]=$((n + 1))
  IFS=$'\x1f' read -r -a av <<<"${argvs[$k]}"
  # setsid: the process leads its own group, so one kill stops it and its
  # children; its group id is the first line of its log.
  remote="cd $(printf %q "$rdir") && exec setsid -w bash -c 'echo $tag-$k \$\$; exec \"\$@\"' crl"
  remote+=$(printf ' %q' "${av[@]}")
  log=$logs/$hn-$role-$n.log
  if [ $dry = 1 ]; then
    printf "%s %s '%s'\n" "${SSH[*]}" "$h" "${remote//\'/\'\\\'\'}"
    continue
  fi
  "${SSH[@]}" "$h" "$remote" </dev/null >>"$log" 2>&1 &
  pids+=($!); names+=("$hn-$role-$n"); logf+=("$log")
  echo "ssh.sh: started $role on $h (ssh pid $!), log $log: $(basename "${av[0]}") ${av[*]:1}"
done
[ $dry = 1 ] && exit 0

learner_k=1
echo "ssh.sh: run '$name' on ${#hosts[@]} hosts; follow it with: tail -f ${logf[$learner_k]}"
tail -n +1 -f "${logf[$learner_k]}" --pid="${pids[$learner_k]}" &
tail_pid=$!
wait "${pids[$learner_k]}"
rc=$?
kill "$tail_pid" 2>/dev/null
for k in "${!pids[@]}"; do
  if [ "$k" != $learner_k ] && ! kill -0 "${pids[$k]}" 2>/dev/null; then
    wait "${pids[$k]}"; st=$?
    echo "ssh.sh: ${names[$k]} had already exited (status $st); see ${logf[$k]}" >&2
  fi
done
stop_all
echo "ssh.sh: learner exited with status $rc"
exit $rc
