#!/usr/bin/env bash
# tests/bench/e2e.sh BIN_DIR SETUP_DIR OUT_DIR [CONFIG]
#
# End-to-end benchmark of `make bench`: a real local run (crl-broker +
# crl-learner rl + N crl-actor, started by launch/local.sh exactly as the
# demo starts them) with the demo's model and RL settings (CONFIG, default
# launch/demo.json), for N = 1 and N = 2 actors, CRL_BENCH_E2E_STEPS RL
# steps each (default 15). SETUP_DIR holds data/ and runs/base/ckpt/latest
# (tests/bench/run.sh makes them: the built-in world, its tokenizer and an
# untrained model from `crl-learner sft` with sft.steps=0 — throughput does
# not depend on what the weights know, except through response lengths).
# Runs land in OUT_DIR/e2e-N (metrics.jsonl, logs/); `crl-bench
# --e2e-report OUT_DIR` prints the table. Endpoints are ipc:// in OUT_DIR,
# so a run on the default TCP ports elsewhere on the machine is not
# disturbed. Each run is cut after CRL_BENCH_E2E_TIMEOUT seconds (300).
set -uo pipefail
bin=${1:?usage: tests/bench/e2e.sh BIN_DIR SETUP_DIR OUT_DIR [CONFIG]}
setup=${2:?usage: tests/bench/e2e.sh BIN_DIR SETUP_DIR OUT_DIR [CONFIG]}
root=${3:?usage: tests/bench/e2e.sh BIN_DIR SETUP_DIR OUT_DIR [CONFIG]}
here=$(cd "$(dirname "$0")/../.." && pwd)
cfg=${4:-$here/launch/demo.json}
steps=${CRL_BENCH_E2E_STEPS:-15}
limit=${CRL_BENCH_E2E_TIMEOUT:-300}
[ -d "$setup/runs/base/ckpt/latest" ] || { echo "e2e.sh: $setup/runs/base/ckpt/latest is missing" >&2; exit 2; }
mkdir -p "$root" || exit 1
status=0
for n in 1 2; do
  name=e2e-$n
  echo "== end-to-end: broker + learner + $n actor(s), $steps RL steps (log $root/$name.out) ==" >&2
  # rl.skip_zero_variance=false: an untrained model earns reward 0 on every
  # sample, and the learner would skip the backward pass of such groups;
  # the benchmark wants the cost of real updates.
  CRL_BIN_DIR=$bin timeout -s TERM "$limit" bash "$here/launch/local.sh" "$cfg" "$n" \
    --set run.dir="$root" --set run.name="$name" --set data.dir="$setup/data" \
    --set rl.init="$setup/runs/base/ckpt/latest" --set rl.steps="$steps" \
    --set rl.checkpoint_every=0 --set rl.skip_zero_variance=false \
    --set network.learner_work="ipc://$root/$name.w" \
    --set network.broker_publish="ipc://$root/$name.p" \
    --set network.broker_announce="ipc://$root/$name.a" \
    --set network.broker_fetch="ipc://$root/$name.f" >"$root/$name.out" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "e2e.sh: the run with $n actor(s) failed (status $rc$([ $rc = 124 ] && echo ", cut after $limit s")); its last lines:" >&2
    tail -n 15 "$root/$name.out" >&2
    status=1
  fi
done
exit $status
