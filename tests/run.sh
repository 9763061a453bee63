#!/usr/bin/env bash
# Runs the Criterion test binary with both cores and a per-test timeout, so a
# hung test fails instead of hanging CI. Extra arguments go to Criterion
# (e.g. --filter 'kernels/*').
set -uo pipefail
bin=${1:?usage: tests/run.sh TEST_BINARY [criterion options]}
shift
export CRL_TEST_TMP=${CRL_TEST_TMP:-$(mktemp -d /tmp/crl-tests.XXXXXX)}
jobs=${CRL_TEST_JOBS:-$(nproc)}
"$bin" --jobs "$jobs" --timeout "${CRL_TEST_TIMEOUT:-300}" -S "$@"
rc=$?
rm -rf "$CRL_TEST_TMP"
exit $rc
