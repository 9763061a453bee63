#!/usr/bin/env bash
# make bench: runs crl's benchmarks and the PyTorch reference at 1 and 2
# threads and prints the figures side by side. Figures on a shared machine
# are noisy; run twice before drawing conclusions.
set -uo pipefail
bench=${1:?usage: tests/bench/run.sh CRL_BENCH_BINARY}
here=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "$(dirname "$bench")" && pwd)
py=/usr/bin/python3
out=$(mktemp -d /tmp/crl-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
for t in 1 2; do
  echo "== crl, $t thread(s) ==" >&2
  OPENBLAS_NUM_THREADS=$t "$bench" --threads "$t" --json "$out/crl-$t.jsonl" || exit 1
  if "$py" -c 'import torch' 2>/dev/null; then
    echo "== pytorch reference, $t thread(s) ==" >&2
    OMP_NUM_THREADS=$t "$py" tests/bench/torch_ref.py --threads "$t" > "$out/torch-$t.jsonl" || echo "pytorch reference failed" >&2
  else
    echo "python3-torch not importable by $py: no PyTorch reference" >&2
  fi
done
"$bench" --report "$out"
echo
echo "== weights fan-out: learner publish -> every actor holds the version (broker vs raw zmq) =="
"$bench" --broker --json "$out/broker.jsonl" || exit 1

# Learner ingest and end-to-end runs need the demo's data, tokenizer and a
# base model; an untrained one (sft.steps=0) is enough for throughput.
echo
echo "== learner ingest and end-to-end RL (demo model; this machine is shared: figures are noisy) =="
setup=$out/setup
mkdir -p "$setup"
echo "== setup: built-in world, tokenizer, untrained base model in $setup ==" >&2
if ! CRL_SFT_VAL_POLICY=0 CRL_SFT_VAL_CRITIC=0 CRL_SFT_VAL_CAPTIONS=0 "$bindir/crl-learner" sft --config "$here/launch/demo.json" \
    --set run.dir="$setup/runs" --set run.name=base --set data.dir="$setup/data" \
    --set sft.steps=0 >"$setup/sft.log" 2>&1; then
  echo "setup failed; last lines of $setup/sft.log:" >&2
  tail -n 15 "$setup/sft.log" >&2
  exit 1
fi
echo "== learner ingest: crl-learner rl fed by fake actors vs zmq alone ==" >&2
"$bench" --ingest "$setup" --config "$here/launch/demo.json" --json "$out/ingest.jsonl" 2>"$out/ingest.log" || {
  echo "learner ingest benchmark failed; its log:" >&2; tail -n 30 "$out/ingest.log" >&2; exit 1; }
echo "machine load before the end-to-end runs: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average) on $(nproc) cores"
bash "$here/tests/bench/e2e.sh" "$bindir" "$setup" "$out/e2e" "$here/launch/demo.json"
e2e=$?
"$bench" --e2e-report "$out/e2e" --json "$out/e2e.jsonl" || exit 1
exit $e2e
