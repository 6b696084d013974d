# tests/lib.sh - sourced by the shell tool tests (tests/*.sh).
# Provides: a scratch folder $T removed on exit, run/expect helpers that
# check exit codes and messages, and skip_unless_fixtures (exit 77 =
# SKIP under automake, never a pass).
set -u
T=$(mktemp -d "${TMPDIR:-/tmp}/lora-test-XXXXXX") || exit 99
trap 'rm -rf "$T"' EXIT
failures=0
checks=0

fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

skip_unless_fixtures() {
    if [ -z "${FIXTURES:-}" ] || [ ! -d "$FIXTURES/real" ]; then
        echo "SKIP: shared fixtures not found (FIXTURES=${FIXTURES:-})"; exit 77
    fi
}

# run CMD...: runs it, saving stdout in $T/out, stderr in $T/err, status in $rc.
# $LORA_WRAP (unquoted: words), when set, goes before CMD when CMD is
# one of our tools (lora-*): `make check-valgrind` puts valgrind there.
# Other programs (minisign, sh) are not ours to check.
run() {
    case ${1##*/} in
    lora-*) ${LORA_WRAP:-} "$@" >"$T/out" 2>"$T/err" ;;
    *) "$@" >"$T/out" 2>"$T/err" ;;
    esac
    rc=$?
    return 0
}

# expect CODE CMD...: run and check the exit code
expect() {
    want=$1; shift
    run "$@"
    checks=$((checks + 1))
    if [ "$rc" -ne "$want" ]; then
        fail "expected exit $want, got $rc: $*"
        sed 's/^/  stderr: /' "$T/err" | head -n 5 >&2
    fi
}

# expect_err PATTERN: last stderr matches (grep -E)
expect_err() {
    checks=$((checks + 1))
    grep -Eq -- "$1" "$T/err" || { fail "stderr lacks /$1/"; sed 's/^/  stderr: /' "$T/err" | head -n 5 >&2; }
}

# expect_out PATTERN: last stdout matches (grep -E)
expect_out() {
    checks=$((checks + 1))
    grep -Eq -- "$1" "$T/out" || { fail "stdout lacks /$1/"; sed 's/^/  stdout: /' "$T/out" | head -n 10 >&2; }
}

# done_testing: print the tally and exit non-zero on any failure
done_testing() {
    echo "$checks checks, $failures failed"
    [ "$failures" -eq 0 ] || exit 1
    [ "$checks" -gt 0 ] || { echo "no checks ran" >&2; exit 99; }
    exit 0
}
