#!/usr/bin/env bash
# make demo: the whole LLaVA-Critic-R1 recipe on the built-in world, on this
# machine, in one command:
#   1. built-in data (crl-data)          reused when present
#   2. tokenizer + base model (sft)      reused when runs/demo-base is complete
#   3. critic RL: broker + learner + 2 actors (launch/local.sh)
#   4. evaluation of base and RL model on the test split, paired, with the
#      paper's three claims beside the measured figures
# Config: launch/demo.json; extra arguments are passed as --set overrides to
# every step, e.g.  make demo DEMO_ARGS="--set rl.steps=50"
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
BIN=${CRL_BIN_DIR:-$here/build/bin}
CFG=${DEMO_CONFIG:-launch/demo.json}
extra=("$@")

get() { "$BIN/crl-learner" config --config "$CFG" "${extra[@]}" "${@:2}" --get "$1"; }
runs=$(get run.dir)
base_name=demo-base
rl_name=demo
base_dir=$runs/$base_name
rl_dir=$runs/$rl_name
t0=$SECONDS
stamp() { printf '[demo %2dm%02ds] %s\n' $(((SECONDS - t0) / 60)) $(((SECONDS - t0) % 60)) "$*"; }

sft_steps=$(get sft.steps)
rl_steps=$(get rl.steps)
items=$(get eval.max_items)
cat <<MSG
crl demo — critic RL on the built-in world (LLaVA-Critic-R1 at toy scale)
  this takes about 14 minutes on a quiet 2-core machine (longer when other
  jobs share it; less when the data and base model already exist): data and
  tokenizer ~10 s, base-model warm-up ($sft_steps steps) ~8 min, critic RL
  ($rl_steps steps, 2 actors) ~2 min, evaluation of both models on $items
  test items ~3 min.
  Everything lands in $runs/ ; logs of the RL processes in $rl_dir/logs/.
MSG

# 1 + 2: data, tokenizer and base model (sft generates missing data itself).
stamp "step 1-2: data, tokenizer and base model ($base_dir)"
"$BIN/crl-learner" sft --config "$CFG" --set run.name=$base_name "${extra[@]}"

# 3: critic RL from the base model, fresh each time (the base is reused).
if [ -d "$rl_dir" ]; then
  stamp "removing the previous RL run $rl_dir (the demo starts RL afresh)"
  rm -rf "$rl_dir"
fi
stamp "step 3: critic RL with a broker, a learner and 2 actors"
bash launch/local.sh "$CFG" 2 --set run.name=$rl_name \
  --set rl.init="$base_dir/ckpt/latest" "${extra[@]}"

# 4: evaluation, base vs RL, paired on the same test items.
stamp "step 4: evaluating base and RL model on the test split"
"$BIN/crl-eval" --config "$CFG" "${extra[@]}" --ckpt "$rl_dir/ckpt/latest" \
  --compare "$base_dir/ckpt/latest" --split test --claims \
  --json "$rl_dir/eval.json"

stamp "done. Curves: $rl_dir/curves.png  metrics: $rl_dir/metrics.jsonl  eval: $rl_dir/eval.json"
stamp "trajectories: build/bin/crl-replay info $rl_dir/traj"
