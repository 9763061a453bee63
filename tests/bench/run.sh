#!/usr/bin/env bash
# make bench: runs crl's benchmarks and the PyTorch reference at 1 and 2
# threads and prints the figures side by side. Figures on a shared machine
# are noisy; run twice before drawing conclusions.
set -uo pipefail
bench=${1:?usage: tests/bench/run.sh CRL_BENCH_BINARY}
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
