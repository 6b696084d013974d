#!/bin/sh
# merge-direct.sh - lora-merge and lora-unmerge write their output's
# whole pages with O_DIRECT (src/lib/direct_io.c) where the file system
# allows it: the files are byte for byte those of the cached writes
# (LORA_NO_DIRECT=1), for a checkpoint whose tensors are not multiples
# of 512 bytes, a merge whose data starts page-aligned (its header
# padded) and an unmerge that writes the base's unaligned header back;
# on tmpfs (no direct writes) the same bytes again; a refused merge
# leaves nothing.
. "$TOP_SRCDIR/tests/lib.sh"
MK="$TOP_BUILDDIR/tests/mkfixture"
ALL=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
# 24 MB (over the writer's 16 MiB floor for direct writes); rows of
# 2000 and 5500 bytes
SHAPE="--dtype BF16 --layers 1 --hidden 1000 --intermediate 2750 --heads 8 --kv-heads 8 --vocab 100 --rank 8"
"$MK" llama "$T/f" $SHAPE --targets $ALL --seed 5 >/dev/null || fail "mkfixture"
"$MK" llama "$T/nan" $SHAPE --targets q_proj,down_proj --nan --seed 5 >/dev/null || fail "mkfixture --nan"
B="$T/f/base/model.safetensors"

# the data offset (8 + header length) of a safetensors file
data_start() { echo $(( $(od -An -tu8 -N8 "$1") + 8 )); }

expect 0 lora-merge -q "$T/f/base" -a "$T/f/adapter" -o "$T/md" -j 2
LORA_NO_DIRECT=1 expect 0 lora-merge -q "$T/f/base" -a "$T/f/adapter" -o "$T/mc" -j 2
cmp -s "$T/md/model.safetensors" "$T/mc/model.safetensors" || fail "merge: direct and cached outputs differ"
cmp -s "$T/md.receipt" "$T/mc.receipt" || fail "merge: direct and cached receipts differ"
cmp -s "$T/md/model.safetensors" "$B" && fail "merge changed nothing"
# (the unmerges below read the merged file: it parses)
[ $(( $(data_start "$T/md/model.safetensors") % 4096 )) -eq 0 ] || fail "merge: data not page-aligned"

[ $(( $(data_start "$B") % 512 )) -ne 0 ] || fail "fixture: the base's data is aligned (the unmerge case needs it not)"
expect 0 lora-unmerge -q "$T/md" -a "$T/f/adapter" --receipt "$T/md.receipt" -o "$T/ud"
cmp -s "$T/ud/model.safetensors" "$B" || fail "unmerge (direct): not the base"
LORA_NO_DIRECT=1 expect 0 lora-unmerge -q "$T/md" -a "$T/f/adapter" --receipt "$T/md.receipt" -o "$T/uc"
cmp -s "$T/uc/model.safetensors" "$B" || fail "unmerge (cached): not the base"

# where strace is at hand: the direct path was taken, and not with the switch
# (LeakSanitizer cannot run under ptrace: off for these two runs only, in
# the sanitizer build; the other runs of lora-merge check for leaks)
if [ -z "${LORA_WRAP:-}" ] && command -v strace >/dev/null 2>&1 &&
   strace -f -o "$T/st" -e trace=openat true 2>/dev/null; then
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -o "$T/st" -e trace=openat lora-merge -q "$T/f/base" -a "$T/f/adapter" -o "$T/ms" >/dev/null 2>&1
    if grep -q 'O_DIRECT[|)]' "$T/st"; then
        cmp -s "$T/ms/model.safetensors" "$T/mc/model.safetensors" || fail "merge under strace differs"
    else
        echo "note: no O_DIRECT open on $T's file system: only the cached path was tested"
    fi
    LORA_NO_DIRECT=1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -o "$T/st" -e trace=openat lora-merge -q "$T/f/base" -a "$T/f/adapter" -o "$T/mn" >/dev/null 2>&1
    grep -q 'O_DIRECT[|)]' "$T/st" && fail "LORA_NO_DIRECT=1: an O_DIRECT open"
fi

# tmpfs: no direct writes (statx reports no alignment), same bytes
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    S=$(mktemp -d /dev/shm/lora-test-XXXXXX) || fail "mktemp /dev/shm"
    expect 0 lora-merge -q "$T/f/base" -a "$T/f/adapter" -o "$S/m"
    cmp -s "$S/m/model.safetensors" "$T/mc/model.safetensors" || fail "merge on tmpfs differs"
    rm -rf "$S"
fi

# a refused merge (a delta that is not finite) leaves nothing
expect 3 lora-merge -q "$T/nan/base" -a "$T/nan/adapter" -o "$T/mnan"
[ -e "$T/mnan" ] && fail "refused merge left $T/mnan"
ls "$T" | grep -q 'tmp-' && fail "a temporary file was left in $T"

done_testing
