#!/usr/bin/env bash
# Builds crl's libFuzzer targets (tests/fuzz/fuzz_*.c) with clang and
# ASan + UBSan, replays every saved crash input of regressions/<target>/,
# then fuzzes each target for SECONDS on a scratch copy of its seed corpus
# (the committed corpus/ never grows). Prints executions, exec/s and
# crashes per target and a final "fuzz: N targets, E executions, C crashes"
# line; exits non-zero on any crash, leak, UB, timeout or build failure,
# naming the reproducer file.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]   (default 5 s, every target;
#                                             0 = replay seeds only)
#   tests/fuzz/run.sh --corpus                regenerate corpus/ and dict/
#
# Reproduce a crash:  $FUZZ_BUILD/fuzz_X  path/to/crash-file
# Keep it: copy it into tests/fuzz/regressions/fuzz_X/ once fixed.
# Environment: FUZZ_BUILD (build folder, default build/fuzz), CLANG
# (default clang), FUZZ_KEEP_CORPUS=1 keeps the grown scratch corpus.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1
FB=${FUZZ_BUILD:-build/fuzz}
CLANG=${CLANG:-clang}
ALL_TARGETS=(fuzz_envelope fuzz_dataset fuzz_safetensors fuzz_traj_log fuzz_tokenizer fuzz_config)
# Sources the targets link (the parsers, and what they call).
SRCS=(common/wire.c common/log.c common/dataset.c common/image.c common/reward.c
      common/safetensors.c common/traj_log.c common/crc32c.c common/tokenizer.c common/config.c)
PKGS="libzmq libprotobuf-c libcjson stb"

die() { echo "fuzz: $*" >&2; exit 1; }

# Largest input per target: big enough for the seeds and a few records,
# small enough that each execution stays fast.
max_len() {
    case $1 in
    fuzz_envelope) echo 4096 ;;
    fuzz_dataset) echo 4096 ;;
    fuzz_safetensors) echo 4096 ;;
    fuzz_traj_log) echo 8192 ;;
    fuzz_tokenizer) echo 16384 ;;
    fuzz_config) echo 16384 ;;
    *) echo 4096 ;;
    esac
}

mode=fuzz
secs=5
targets=()
for a in "$@"; do
    case $a in
    --corpus) mode=corpus ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    [0-9]*) secs=$a ;;
    fuzz_*) targets+=("$a") ;;
    *) die "unknown argument '$a' (see --help)" ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [ -f "$here/$t.c" ] || die "no target $t (tests/fuzz/$t.c)"
done

command -v "$CLANG" >/dev/null || die "$CLANG not found: install the Debian packages clang and libclang-rt-14-dev (make deps)"
command -v protoc-c >/dev/null || die "protoc-c not found (make deps)"
# shellcheck disable=SC2086 # a list of names
pkg_cflags=$(pkg-config --cflags $PKGS) || die "pkg-config: $PKGS missing (make deps)"
# shellcheck disable=SC2086
pkg_libs=$(pkg-config --libs $PKGS) || die "pkg-config: $PKGS missing (make deps)"

mkdir -p "$FB/obj" "$FB/proto" || exit 1
BASE_CFLAGS="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer -pthread \
 -I. -Icommon -I$FB -I$here $pkg_cflags"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# protoc-c output, regenerated when the .proto changes.
if [ ! -f "$FB/proto/crl.pb-c.c" ] || [ proto/crl.proto -nt "$FB/proto/crl.pb-c.c" ]; then
    protoc-c --c_out="$FB" proto/crl.proto || die "protoc-c failed"
fi

# Compiles $1 to $2 with flags $3 unless the object is newer than the
# source and every header it included (clang's -MMD list in $2.d).
compile() {
    local src=$1 obj=$2 flags=$3 stale=0 dep
    if [ ! -f "$obj" ] || [ ! -f "$obj.d" ]; then
        stale=1
    else
        # shellcheck disable=SC2013 # make-style dependency list: words
        for dep in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$obj.d"); do
            if [ ! -e "$dep" ] || [ "$dep" -nt "$obj" ]; then stale=1; break; fi
        done
    fi
    [ $stale = 0 ] && return 0
    mkdir -p "$(dirname "$obj")"
    echo "  CC      $src" >&2
    # shellcheck disable=SC2086
    $CLANG $BASE_CFLAGS $flags -MMD -MF "$obj.d" -c -o "$obj" "$src"
}

# Compiles the library sources into $1 with extra flags $2, two at a time
# (FUZZ_JOBS); prints the object list.
build_objs() {
    local dir=$1 flags=$2 list=() pids=() s o p rc=0
    for s in "${SRCS[@]}" "$FB/proto/crl.pb-c.c"; do
        o="$dir/$(basename "${s%.c}").o"
        while [ "$(jobs -rp | wc -l)" -ge "${FUZZ_JOBS:-2}" ]; do wait -n; done
        compile "$s" "$o" "$flags" &
        pids+=($!)
        list+=("$o")
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ $rc = 0 ] || return 1
    echo "${list[@]}"
}

if [ $mode = corpus ]; then
    # Seeds come from the library's own writers, built without sanitizers.
    objs=$(build_objs "$FB/obj-plain" "") || die "build failed"
    compile "$here/gen_corpus.c" "$FB/obj-plain/gen_corpus.o" "" || die "build failed"
    # shellcheck disable=SC2086
    $CLANG -pthread -o "$FB/gen_corpus" "$FB/obj-plain/gen_corpus.o" $objs $pkg_libs -lm ||
        die "link failed"
    rm -rf "$here/corpus" "$here/dict"
    "$FB/gen_corpus" "$here" || die "gen_corpus failed"
    echo "fuzz: corpus regenerated: $(find "$here/corpus" -type f | wc -l) files," \
         "$(find "$here/corpus" -type f -printf '%s\n' | awk '{s += $1} END {print s}') bytes"
    exit 0
fi

objs=$(build_objs "$FB/obj" "-fsanitize=fuzzer-no-link $SAN") || die "build failed"
for t in "${targets[@]}"; do
    compile "$here/$t.c" "$FB/obj/$t.o" "-fsanitize=fuzzer-no-link $SAN" || die "build of $t failed"
    relink=0
    [ -x "$FB/$t" ] || relink=1
    for o in $objs "$FB/obj/$t.o"; do [ "$o" -nt "$FB/$t" ] && relink=1; done
    if [ $relink = 1 ]; then
        echo "  LD      $FB/$t" >&2
        # shellcheck disable=SC2086
        $CLANG -fsanitize=fuzzer $SAN -pthread -o "$FB/$t" "$FB/obj/$t.o" $objs $pkg_libs -lm ||
            die "link of $t failed (is libclang-rt-14-dev installed?)"
    fi
done

# halt_on_error: the first UB report is a crash with a saved input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}

# The useful lines of a libFuzzer crash log: the failed check or the
# sanitizer report, and the stack frames of crl's own code.
show_crash() {
    grep -E "check failed|ERROR: |SUMMARY: |runtime error|READ of|WRITE of|#[0-9]+ 0x" "$1" |
        grep -v -E "in (fuzzer::|__sanitizer|__asan|__ubsan|__interceptor|__pthread_kill|__libc_start|abort |raise |_start |main )|libc\.so" |
        head -n 25 >&2
}

total_execs=0
total_crashes=0
failed=()
work="$FB/work"
for t in "${targets[@]}"; do
    bin="$FB/$t"
    tw="$work/$t"
    rm -rf "$tw"
    mkdir -p "$tw/corpus" "$tw/artifacts"
    crashes=0
    reg="$here/regressions/$t"
    # 1. Replay every saved crash input: each must now pass.
    nreg=0
    if [ -d "$reg" ] && [ -n "$(ls -A "$reg" 2>/dev/null)" ]; then
        nreg=$(find "$reg" -type f | wc -l)
        if ! "$bin" -rss_limit_mb=2048 -timeout=10 "$reg"/* >"$tw/replay.log" 2>&1; then
            crashes=$((crashes + 1))
            bad=$(grep -o 'Running: .*' "$tw/replay.log" | tail -1 | sed 's/Running: //')
            echo "fuzz: $t: regression input fails again: ${bad:-see $tw/replay.log}" >&2
            show_crash "$tw/replay.log"
            failed+=("$t: regression ${bad:-?}")
        fi
        cp "$reg"/* "$tw/corpus/" 2>/dev/null
    fi
    if [ $crashes -ne 0 ]; then # fuzzing would only find it again
        total_crashes=$((total_crashes + crashes))
        printf 'fuzz: %-18s not fuzzed: a regression input fails  crashes %d\n' "$t" "$crashes"
        continue
    fi
    # 2. Fuzz a scratch copy of the seeds.
    [ -d "$here/corpus/$t" ] && cp "$here/corpus/$t"/* "$tw/corpus/" 2>/dev/null
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    # 0 seconds: only run the seeds (and regressions) once, no fuzzing.
    if [ "$secs" = 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$secs"); fi
    # A fixed seed (make test sets FUZZ_SEED=1) makes the short run explore the
    # same input sequence every time; make fuzz explores with a random seed.
    if [ -n "${FUZZ_SEED:-}" ]; then limit+=(-seed="$FUZZ_SEED"); fi
    "$bin" "${limit[@]}" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$tw/artifacts/" "${dict[@]}" \
        "$tw/corpus" >"$tw/fuzz.log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tw/fuzz.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$tw/fuzz.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$tw/fuzz.log" | tail -1 | cut -d' ' -f2)
    if [ $rc -ne 0 ]; then
        crashes=$((crashes + 1))
        art=$(sed -n 's/.*Test unit written to //p' "$tw/fuzz.log" | tail -1)
        echo "fuzz: $t: CRASH (exit $rc); reproducer: ${art:-none written, see $tw/fuzz.log}" >&2
        show_crash "$tw/fuzz.log"
        echo "fuzz: $t: reproduce with: $bin ${art:-}" >&2
        failed+=("$t: ${art:-$tw/fuzz.log}")
    fi
    execs=${execs:-0}
    total_execs=$((total_execs + execs))
    total_crashes=$((total_crashes + crashes))
    printf 'fuzz: %-18s %10s execs  %7s exec/s  cov %5s  %d regressions replayed  crashes %d\n' \
        "$t" "$execs" "${rate:-?}" "${cov:-?}" "$nreg" "$crashes"
    if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ] && [ $crashes -eq 0 ]; then
        rm -rf "$tw"
    fi
done

echo "fuzz: ${#targets[@]} targets, $total_execs executions, $total_crashes crashes"
if [ $total_crashes -ne 0 ]; then
    for f in "${failed[@]}"; do echo "fuzz: FAILED $f" >&2; done
    exit 1
fi
exit 0
