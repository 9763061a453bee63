#!/usr/bin/env bash
# The long chaos run (`make chaos`): the chaos suite of the test binary
# (tests/test_chaos.c) with many more faults than the short version that
# `make test` runs. A local run (crl-broker, crl-learner rl, several
# crl-actor) is attacked: random actors SIGKILLed and replaced, the broker
# killed and restarted, the learner SIGKILLed and resumed from its latest
# checkpoint; then the run must finish its steps with every group used or
# dropped for a counted reason, staleness within bounds and no process left.
#
#   tests/chaos/chaos.sh TEST_BINARY        (CRL_BIN_DIR must point at bin/)
#
# Knobs (environment): CRL_CHAOS_FAULTS (default 60), CRL_CHAOS_GAP (learner
# steps between faults, 3), CRL_CHAOS_ACTORS (4), CRL_CHAOS_SEED (default:
# the time; printed so a failure can be replayed), CRL_CHAOS_STALL_S (60:
# seconds without a step that count as a hang), CRL_CHAOS_ROUNDS (1: runs
# with consecutive seeds).
set -uo pipefail
bin=${1:?usage: tests/chaos/chaos.sh TEST_BINARY}
: "${CRL_BIN_DIR:?set CRL_BIN_DIR to the folder holding crl-learner, crl-actor, crl-broker}"
export CRL_BIN_DIR
export CRL_CHAOS_FAULTS=${CRL_CHAOS_FAULTS:-60}
export CRL_CHAOS_GAP=${CRL_CHAOS_GAP:-3}
export CRL_CHAOS_ACTORS=${CRL_CHAOS_ACTORS:-4}
export CRL_CHAOS_STALL_S=${CRL_CHAOS_STALL_S:-60}
rounds=${CRL_CHAOS_ROUNDS:-1}
seed=${CRL_CHAOS_SEED:-$(date +%s)}
export CRL_TEST_TMP=${CRL_TEST_TMP:-$(mktemp -d /tmp/crl-chaos.XXXXXX)}
rc=0
for ((i = 0; i < rounds; i++)); do
    export CRL_CHAOS_SEED=$((seed + i))
    echo "chaos round $((i + 1))/$rounds: seed $CRL_CHAOS_SEED, $CRL_CHAOS_FAULTS faults, $CRL_CHAOS_ACTORS actors"
    # one test at a time (the run uses both cores); a generous per-test cap
    "$bin" --jobs 1 --timeout "${CRL_TEST_TIMEOUT:-3000}" -S --filter 'chaos/kill*' || rc=1
done
if [ $rc -eq 0 ]; then
    rm -rf "$CRL_TEST_TMP"
else
    echo "chaos: FAILED; the run folders (logs of every process) are kept in $CRL_TEST_TMP" >&2
fi
exit $rc
