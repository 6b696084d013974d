#!/bin/sh
# tests/faults.sh - faults while a tool writes: the output disk full
# (ulimit -f with SIGXFSZ ignored, so write() fails with EFBIG) and
# kill -9 at 20 points of a run.  Afterwards nothing may be under the
# final name but a complete, valid output.  Tools not built yet are
# skipped one by one; the whole test SKIPs (77) when none is there.
#
# A file shrinking under a tool's mmap (SIGBUS) is checked only with
# LORA_TEST_SIGBUS=1: liblora maps safetensors files and does not yet
# survive a concurrent truncation (a known defect, see issue 9's notes).
. "$TOP_SRCDIR/tests/lib.sh"
have() { command -v "$1" >/dev/null 2>&1; }
ran=0

"$TOP_BUILDDIR/tests/mkfixture" llama "$T/g" --layers 4 --hidden 512 --intermediate 1024 \
    --vocab 64 --rank 32 --targets q_proj,k_proj,v_proj,o_proj >/dev/null ||
    { echo "mkfixture failed" >&2; exit 99; }

# disk_full NAME OUT CMD...: CMD writing OUT with at most 32 KiB per file
disk_full() {
    name=$1 out=$2; shift 2
    rm -rf "$out"
    run sh -c 'ulimit -f 64; trap "" XFSZ; exec "$@"' sh "$@"
    checks=$((checks + 1))
    [ "$rc" -eq 4 ] || fail "$name, disk full: expected exit 4, got $rc"
    expect_err "File too large"
    checks=$((checks + 1))
    [ ! -e "$out" ] || fail "$name, disk full: $out exists"
    checks=$((checks + 1))
    left=$(ls -d "$out".tmp* 2>/dev/null)
    [ -z "$left" ] || fail "$name, disk full: temporaries left: $left"
}

# kill_points NAME OUT VERIFY CMD...: 20 runs of CMD killed by SIGKILL
# after 0, 30, ..., 570 ms; OUT must then be absent or pass VERIFY OUT.
kill_points() {
    name=$1 out=$2 verify=$3; shift 3
    i=0
    while [ $i -lt 20 ]; do
        rm -rf "$out" "$out".tmp*
        "$@" >/dev/null 2>&1 &
        pid=$!
        sleep "$(printf '0.%03d' $((i * 30)))"
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        checks=$((checks + 1))
        if [ -e "$out" ]; then
            $verify "$out" >/dev/null 2>&1 || fail "$name killed at point $i: partial $out"
        fi
        i=$((i + 1))
    done
}

if have lora-rank-reduce; then
    ran=1
    disk_full lora-rank-reduce "$T/rr" lora-rank-reduce "$T/g/adapter" -o "$T/rr" --rank 8 -q
    expect 0 lora-rank-reduce "$T/g/adapter" -o "$T/rr" --rank 8 -q   # works without the limit
    kill_points lora-rank-reduce "$T/rr" "lora-inspect --check" \
        lora-rank-reduce "$T/g/adapter" -o "$T/rr" --rank 8 -q
fi

if [ "${LORA_TEST_SIGBUS:-0}" = 1 ]; then
    ran=1
    for d in 0.05 0.1 0.2 0.3 0.4; do
        rm -rf "$T/v"; cp -r "$T/g/adapter" "$T/v"
        lora-inspect --check "$T/v" >/dev/null 2>&1 &
        pid=$!
        sleep $d
        truncate -s 200 "$T/v/adapter_model.safetensors"
        wait $pid; r=$?
        checks=$((checks + 1))
        [ $r -lt 128 ] || fail "lora-inspect died of signal $((r - 128)) on a file truncated after ${d}s"
    done
fi

[ $ran = 1 ] || { echo "SKIP: none of the writing tools is built yet"; exit 77; }
done_testing
