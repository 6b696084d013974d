#!/bin/sh
# tests/faults.sh - faults while a tool writes or reads, for every tool
# that writes: lora-merge (file and folder output, with receipt; a
# re-merge onto an existing output and receipt),
# lora-unmerge (with the receipt), lora-rank-reduce, lora-pack create and
# extract --force (the folder is v1 or v2, whole), and lora-registry add.
#
#  - disk full: ulimit -f with SIGXFSZ ignored (write() fails with EFBIG),
#    and, where a private mount namespace can be made (unshare -rm), a
#    small tmpfs (ENOSPC) at sizes that fail early, midway and at the very
#    end of a run.  Exit 4, a message naming the cause, no file under a
#    final name, no temporary left, a registry unchanged.
#  - kill -9 at 20 points of a run (0 .. 19 x STEP ms, STEP chosen per
#    tool so that the points spread over the whole run on a quiet
#    machine).  Afterwards every final name is absent or holds exactly the
#    bytes of an uninterrupted run (outputs are deterministic), a merged
#    OUT never stands without its receipt, and a registry passes
#    `lora-registry verify` with the adapter fully present or absent.
#  - an input truncated under the tool's mmap (SIGBUS), swept over the
#    run of lora-inspect --check and lora-merge: exit 4 with the SIGBUS
#    message, or a clean error; never a signal, never an output, no
#    temporary left (the handler removes liblora's temporaries).
# Tools not built yet are skipped one by one; the whole test SKIPs (77)
# when none is there.
. "$TOP_SRCDIR/tests/lib.sh"
have() { command -v "$1" >/dev/null 2>&1; }
ran=0
MKF="$TOP_BUILDDIR/tests/mkfixture"

# A base that takes ~0.5 s to merge (37 MB), its adapter (1.8 MB), and a
# larger adapter (33 MB) so that pack and registry add last long enough
# for the kill points to land inside them.
"$MKF" llama "$T/g" --layers 4 --hidden 512 --intermediate 1024 \
    --vocab 64 --rank 32 --targets q_proj,k_proj,v_proj,o_proj >/dev/null &&
"$MKF" llama "$T/big" --no-base --layers 4 --hidden 512 --intermediate 1024 --vocab 64 \
    --rank 256 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj >/dev/null ||
    { echo "mkfixture failed" >&2; exit 99; }
BASE="$T/g/base/model.safetensors"

# same REF OUT: OUT holds exactly what REF holds (file or folder)
same() {
    if [ -d "$1" ]; then [ -d "$2" ] && diff -r -q "$1" "$2" >/dev/null 2>&1
    else [ -f "$2" ] && cmp -s "$1" "$2"; fi
}

# The verifier must be able to fail: a truncated copy of a reference
# output, or a folder missing a file, is not "the same".
selftest_same() {
    cp "$BASE" "$T/trunc"
    truncate -s 1000000 "$T/trunc"
    checks=$((checks + 1))
    same "$BASE" "$T/trunc" && fail "the verifier accepts a truncated file"
    mkdir -p "$T/fold"; cp "$T/g/base/config.json" "$T/fold/"
    checks=$((checks + 1))
    same "$T/g/base" "$T/fold" && fail "the verifier accepts a folder missing a file"
    rm -rf "$T/trunc" "$T/fold"
}
selftest_same

# no_finals OUT...: none of the final names exists, no temporary is left
no_finals() {
    for o in "$@"; do
        checks=$((checks + 1))
        [ ! -e "$o" ] || fail "$name, $how: $o exists"
        checks=$((checks + 1))
        left=$(ls -d "$o".tmp* 2>/dev/null)
        [ -z "$left" ] || fail "$name, $how: temporaries left: $left"
    done
}

# disk_full NAME "OUT..." CMD...: CMD may write files of at most 32 KiB
disk_full() {
    name=$1 outs=$2 how="disk full (ulimit -f)"; shift 2
    for o in $outs; do rm -rf "$o" "$o".tmp*; done
    run sh -c 'ulimit -f 64; trap "" XFSZ; exec "$@"' sh "$@"
    checks=$((checks + 1))
    [ "$rc" -eq 4 ] || fail "$name, $how: expected exit 4, got $rc"
    expect_err "^$name: .*File too large"
    # shellcheck disable=SC2086
    no_finals $outs
}

# A small tmpfs in a private mount namespace: ENOSPC where a real disk
# fills.  Optional: not every system lets a user make one.
FULL="$T/full"
mkdir -p "$FULL"
if unshare -rm sh -c 'mount -t tmpfs -o size=64k tmpfs "$1"' sh "$FULL" 2>/dev/null; then
    have_ns=1
else
    have_ns=0
    echo "note: no private tmpfs (unshare -rm failed): ENOSPC cases not run"
fi

# enospc NAME SIZE_KB PREP "OUT..." CMD...: in a namespace with a tmpfs of
# SIZE_KB on $FULL, run the shell code PREP, then CMD (stdout, stderr, exit
# status and a listing of $FULL are kept in $T/ns.*).  OUT are names under
# $FULL.  CMD must either succeed (exit 0, every OUT there) or fail with
# exit 4, "No space left on device" and none of OUT or their temporaries.
enospc() {
    name=$1 size=$2 prep=$3 outs=$4 how="disk full (tmpfs of ${2} KiB)"; shift 4
    rm -f "$T"/ns.*
    unshare -rm sh -c '
        T=$1 FULL=$2 size=$3 prep=$4; shift 4
        mount -t tmpfs -o size=${size}k tmpfs "$FULL" || exit 90
        eval "$prep" || exit 91
        "$@" >"$T/ns.out" 2>"$T/ns.err"; echo $? >"$T/ns.rc"
        ls -A "$FULL" >"$T/ns.ls"
        [ -z "${post:-}" ] || eval "$post"' sh "$T" "$FULL" "$size" "$prep" "$@"
    r=$?
    checks=$((checks + 1))
    if [ $r -ne 0 ] || [ ! -f "$T/ns.rc" ]; then
        fail "$name, $how: the namespace run failed ($r)"; return
    fi
    rc=$(cat "$T/ns.rc")
    if [ "$rc" -eq 0 ]; then
        for o in $outs; do
            checks=$((checks + 1))
            grep -qx "$o" "$T/ns.ls" || fail "$name, $how: exit 0 but no $o"
        done
    else
        checks=$((checks + 1))
        [ "$rc" -eq 4 ] || fail "$name, $how: expected exit 4, got $rc"
        checks=$((checks + 1))
        grep -Eq "^$name: .*No space left on device" "$T/ns.err" ||
            fail "$name, $how: unclear message: $(cat "$T/ns.err")"
        for o in $outs; do
            checks=$((checks + 1))
            ! grep -q "^$o" "$T/ns.ls" || fail "$name, $how: left $(grep "^$o" "$T/ns.ls" | tr '\n' ' ')"
        done
    fi
}

# kb PATH...: the KiB they take on disk
kb() { du -sk "$@" | awk '{s += $1} END {print s}'; }

# enospc_sizes NAME NEED PREP "OUT..." CMD...: enospc at sizes that fail
# early, midway, near the end and just short of NEED KiB.
enospc_sizes() {
    [ $have_ns = 1 ] || return 0
    # (sh has no local variables: these names are used nowhere else)
    es_name=$1 es_need=$2 es_prep=$3 es_outs=$4; shift 4
    for es_size in 64 $((es_need / 2)) $((es_need - 32)) $((es_need - 8)); do
        enospc "$es_name" "$es_size" "$es_prep" "$es_outs" "$@"
    done
}

# kill_points NAME STEP_MS CHECK CMD...: 20 runs of CMD killed with
# SIGKILL after 0, STEP, ..., 19 x STEP ms, each after running $setup
# (shell code) and followed by CHECK (a function, given the point).
kill_points() {
    name=$1 step=$2 check=$3; shift 3
    i=0 n_none=0 n_mid=0 n_done=0
    while [ $i -lt 20 ]; do
        eval "$setup"
        "$@" >/dev/null 2>&1 &
        pid=$!
        ms=$((i * step))
        sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        $check $i
        # where the kill landed: before any file, mid-write (temporaries
        # only), or after the output was complete
        f1=${finals%% *}
        if [ -e "$f1" ]; then n_done=$((n_done + 1))
        elif ls -d "$f1".tmp* >/dev/null 2>&1 || ls "$(dirname "$f1")" | grep -q '^incoming\.tmp'
        then n_mid=$((n_mid + 1))
        else n_none=$((n_none + 1)); fi
        i=$((i + 1))
    done
    echo "$name: 20 kill points: $n_none before any file, $n_mid mid-write, $n_done complete"
}

# check_outs: each of $finals absent or the same as its reference in $refs
check_outs() {
    set -- $refs
    for o in $finals; do
        checks=$((checks + 1))
        if [ -e "$o" ] && ! same "$1" "$o"; then
            fail "$name killed at point $pt: partial $o"
        fi
        shift
    done
}
# merge outputs: also never OUT without its receipt
check_merge() {
    pt=$1
    check_outs
    set -- $finals
    checks=$((checks + 1))
    if [ -e "$1" ] && [ ! -e "$2" ]; then fail "$name killed at point $pt: $1 without its receipt"; fi
}
check_plain() { pt=$1; check_outs; }

# ---- lora-merge: a single file, and a folder --------------------------
if have lora-merge; then
    ran=1
    expect 0 lora-merge "$BASE" -a "$T/g/adapter" -o "$T/ref.st" -q
    expect 0 lora-merge "$T/g/base" -a "$T/g/adapter" -o "$T/refdir" -q
    disk_full lora-merge "$T/m.st $T/m.st.receipt" lora-merge "$BASE" -a "$T/g/adapter" -o "$T/m.st" -q
    disk_full lora-merge "$T/md $T/md.receipt" lora-merge "$T/g/base" -a "$T/g/adapter" -o "$T/md" -q
    need=$(kb "$T/ref.st" "$T/ref.st.receipt")
    enospc_sizes lora-merge "$need" : "m.st m.st.receipt" \
        lora-merge "$BASE" -a "$T/g/adapter" -o "$FULL/m.st" -q
    need=$(kb "$T/refdir" "$T/refdir.receipt")
    enospc_sizes lora-merge "$need" : "md md.receipt" \
        lora-merge "$T/g/base" -a "$T/g/adapter" -o "$FULL/md" -q

    refs="$T/ref.st $T/ref.st.receipt" finals="$T/m.st $T/m.st.receipt"
    setup='rm -rf $finals $T/m.st.tmp* $T/m.st.receipt.tmp*'
    kill_points lora-merge 30 check_merge lora-merge "$BASE" -a "$T/g/adapter" -o "$T/m.st" -q
    refs="$T/refdir $T/refdir.receipt" finals="$T/md $T/md.receipt"
    setup='rm -rf $finals $T/md.tmp* $T/md.receipt.tmp*'
    kill_points lora-merge 30 check_merge lora-merge "$T/g/base" -a "$T/g/adapter" -o "$T/md" -q
    setup=
fi

# ---- a re-merge onto an existing OUT and receipt -------------------------
# Every crash leaves a pair that restores the base (old or new), or a
# new OUT beside the old receipt that lora-unmerge refuses with exit 1,
# naming RECEIPT.new, which then restores it.  Timed kills, and the two
# exact points between the commit's steps (LORA_FAULT_POINT, merge.c).
if have lora-merge && have lora-unmerge; then
    ran=1
    "$MKF" llama "$T/g2" --no-base --layers 4 --hidden 512 --intermediate 1024 --vocab 64 \
        --rank 8 --targets q_proj,v_proj --seed 4 >/dev/null || fail "mkfixture g2"
    expect 0 lora-merge "$BASE" -a "$T/g/adapter" -o "$T/old.st" -q
    finals="$T/rm.st $T/rm.st.receipt"
    setup='rm -rf $T/rm.st* ; cp "$T/old.st" "$T/rm.st"; cp "$T/old.st.receipt" "$T/rm.st.receipt"'
    check_remerge() {
        pt=$1 ok=
        for a in g g2; do
            run lora-unmerge "$T/rm.st" -a "$T/$a/adapter" --receipt "$T/rm.st.receipt" -o "$T/rmu.st" -q
            [ "$rc" -eq 0 ] && ok=$a && break
            if [ "$rc" -eq 1 ] && grep -q "receipt of this file is .*rm.st.receipt.new" "$T/err"; then
                mv "$T/rm.st.receipt.new" "$T/rm.st.receipt"
                run lora-unmerge "$T/rm.st" -a "$T/g2/adapter" --receipt "$T/rm.st.receipt" -o "$T/rmu.st" -q
                [ "$rc" -eq 0 ] && ok="$a via RECEIPT.new" && break
            fi
        done
        checks=$((checks + 1))
        if [ -z "$ok" ]; then fail "re-merge killed at point $pt: no pair restores the base"
        elif ! cmp -s "$T/rmu.st" "$BASE"; then fail "re-merge killed at point $pt: not the base"; fi
        rm -f "$T/rmu.st"
    }
    for p in merge-before-output merge-between-renames; do
        eval "$setup"
        (LORA_FAULT_POINT=$p exec lora-merge "$BASE" -a "$T/g2/adapter" -o "$T/rm.st" -q) \
            >/dev/null 2>&1
        check_remerge "$p"
    done
    kill_points "lora-merge (re-merge)" 30 check_remerge \
        lora-merge "$BASE" -a "$T/g2/adapter" -o "$T/rm.st" -q
    setup=
fi

# ---- lora-unmerge, with the receipt ------------------------------------
if have lora-unmerge && [ -f "$T/ref.st.receipt" ]; then
    ran=1
    expect 0 lora-unmerge "$T/ref.st" -a "$T/g/adapter" --receipt "$T/ref.st.receipt" -o "$T/refu.st" -q
    checks=$((checks + 1)); cmp -s "$T/refu.st" "$BASE" || fail "lora-unmerge did not restore the base"
    disk_full lora-unmerge "$T/u.st" lora-unmerge "$T/ref.st" -a "$T/g/adapter" \
        --receipt "$T/ref.st.receipt" -o "$T/u.st" -q
    enospc_sizes lora-unmerge "$(kb "$T/refu.st")" : "u.st" lora-unmerge "$T/ref.st" \
        -a "$T/g/adapter" --receipt "$T/ref.st.receipt" -o "$FULL/u.st" -q
    refs="$T/refu.st" finals="$T/u.st"
    setup='rm -rf $finals $T/u.st.tmp*'
    kill_points lora-unmerge 30 check_plain lora-unmerge "$T/ref.st" -a "$T/g/adapter" \
        --receipt "$T/ref.st.receipt" -o "$T/u.st" -q
    setup=
fi

# ---- lora-rank-reduce ---------------------------------------------------
if have lora-rank-reduce; then
    ran=1
    expect 0 lora-rank-reduce "$T/g/adapter" -o "$T/refrr" --rank 8 -q
    disk_full lora-rank-reduce "$T/rr" lora-rank-reduce "$T/g/adapter" -o "$T/rr" --rank 8 -q
    enospc_sizes lora-rank-reduce "$(kb "$T/refrr")" : "rr" \
        lora-rank-reduce "$T/g/adapter" -o "$FULL/rr" --rank 8 -q
    refs="$T/refrr" finals="$T/rr"
    setup='rm -rf $finals $T/rr.tmp*'
    kill_points lora-rank-reduce 30 check_plain lora-rank-reduce "$T/g/adapter" -o "$T/rr" --rank 8 -q
    setup=
fi

# ---- lora-pack create and lora-registry add ------------------------------
if have lora-pack; then
    ran=1
    expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub"
    PACK="lora-pack create $T/big/adapter -s $T/k.sec --name big --task t --version 1.0.0"
    expect 0 $PACK -o "$T/ref.lora" -q
    disk_full lora-pack "$T/a.lora" $PACK -o "$T/a.lora" -q
    enospc_sizes lora-pack "$(kb "$T/ref.lora")" : "a.lora" $PACK -o "$FULL/a.lora" -q
    refs="$T/ref.lora" finals="$T/a.lora"
    setup='rm -rf $finals $T/a.lora.tmp*'
    kill_points lora-pack 40 check_plain $PACK -o "$T/a.lora" -q
    setup=
fi

# ---- lora-pack extract --force: the folder is v1 or v2, whole -------------
# (issue 20 item 2) X holds v1 (the small adapter's archive); extracting
# v2 (the large one) over it with --force under a full disk or a kill -9
# leaves X exactly v1 or exactly v2, never v2's config beside v1's
# tensors.  A kill may leave X.extract-XXXXXX; the next run removes it.
if have lora-pack && [ -f "$T/ref.lora" ]; then
    ran=1
    expect 0 lora-pack create "$T/g/adapter" -s "$T/k.sec" --name small --task s --version 1.0.0 \
        -o "$T/v1.lora" -q
    expect 0 lora-pack extract "$T/v1.lora" -C "$T/xv1" -p "$T/k.pub" -q
    expect 0 lora-pack extract "$T/ref.lora" -C "$T/xv2" -p "$T/k.pub" -q
    # version_of DIR: v1, v2 or mixed
    version_of() {
        if diff -r -q "$T/xv1" "$1" >/dev/null 2>&1; then echo v1
        elif diff -r -q "$T/xv2" "$1" >/dev/null 2>&1; then echo v2
        else echo mixed; fi
    }
    checks=$((checks + 1)); [ "$(version_of "$T/xv1")" = v1 ] && [ "$(version_of "$T/xv2")" = v2 ] &&
        mkdir "$T/xmix" && cp "$T/xv2/adapter_config.json" "$T/xmix/" &&
        cp "$T/xv1/adapter_model.safetensors" "$T/xmix/" &&
        [ "$(version_of "$T/xmix")" = mixed ] || fail "extract: the v1/v2/mixed verifier does not tell them apart"
    EXTRACT="lora-pack extract $T/ref.lora -p $T/k.pub --force -q"

    how="disk full (ulimit -f)"
    rm -rf "$T/x" "$T"/x.extract-*; cp -r "$T/xv1" "$T/x"
    run sh -c 'ulimit -f 64; trap "" XFSZ; exec "$@"' sh $EXTRACT -C "$T/x"
    checks=$((checks + 1)); [ "$rc" -eq 4 ] || fail "lora-pack extract, $how: expected exit 4, got $rc"
    expect_err "^lora-pack: .*File too large"
    checks=$((checks + 1)); [ "$(version_of "$T/x")" = v1 ] || fail "lora-pack extract, $how: X is $(version_of "$T/x")"
    checks=$((checks + 1)); ! ls -d "$T"/x.* >/dev/null 2>&1 || fail "lora-pack extract, $how: left $(ls -d "$T"/x.*)"

    if [ $have_ns = 1 ]; then
        v1kb=$(kb "$T/xv1") v2kb=$(kb "$T/xv2")
        for s in $((v1kb + 64)) $((v1kb + v2kb / 2)) $((v1kb + v2kb - 32)) $((v1kb + v2kb + 256)); do
            post='if diff -r -q "$T/xv1" "$FULL/x" >/dev/null 2>&1; then echo v1
                  elif diff -r -q "$T/xv2" "$FULL/x" >/dev/null 2>&1; then echo v2
                  else echo mixed; fi >"$T/ns.which"'
            export post
            rm -f "$T/ns.which"
            # shellcheck disable=SC2086
            enospc "lora-pack" "$s" 'lora-pack extract "$T/v1.lora" -C "$FULL/x" -p "$T/k.pub" -q' "" \
                $EXTRACT -C "$FULL/x"
            post=
            checks=$((checks + 1))
            w=$(cat "$T/ns.which" 2>/dev/null)
            if [ "$rc" -eq 0 ]; then [ "$w" = v2 ] || fail "lora-pack extract, $how: exit 0 and X is '$w'"
            else [ "$w" = v1 ] || fail "lora-pack extract, $how: exit $rc and X is '$w'"; fi
            checks=$((checks + 1))
            ! grep -q '^x\.' "$T/ns.ls" || fail "lora-pack extract, $how: left $(grep '^x\.' "$T/ns.ls" | tr '\n' ' ')"
        done
    fi

    i=0 n_v1=0 n_v2=0
    while [ $i -lt 20 ]; do
        rm -rf "$T/x"; cp -r "$T/xv1" "$T/x"
        $EXTRACT -C "$T/x" >/dev/null 2>&1 &
        pid=$!
        ms=$((i * 40))
        sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        w=$(version_of "$T/x")
        checks=$((checks + 1))
        case $w in v1) n_v1=$((n_v1 + 1)) ;; v2) n_v2=$((n_v2 + 1)) ;;
        *) fail "lora-pack extract killed after $ms ms: X is $w" ;; esac
        i=$((i + 1))
    done
    echo "lora-pack extract: 20 kill points: $n_v1 left v1, $n_v2 left v2, none mixed"
    # what the kills left beside X is removed by the next run
    expect 0 $EXTRACT -C "$T/x"
    checks=$((checks + 1)); ! ls -d "$T"/x.* >/dev/null 2>&1 || fail "lora-pack extract: stale temporaries kept: $(ls -d "$T"/x.*)"
    checks=$((checks + 1)); [ "$(version_of "$T/x")" = v2 ] || fail "lora-pack extract: X is not v2 after a clean run"
fi

if have lora-registry && [ -f "$T/ref.lora" ]; then
    ran=1
    # a registry that trusts the key and holds one small adapter already
    R0="$T/reg0"
    expect 0 lora-registry -r "$R0/r.db" trust "$T/k.pub" -q
    expect 0 lora-pack create "$T/g/adapter" -s "$T/k.sec" --name small --task s --version 1.0.0 -o "$T/small.lora" -q
    expect 0 lora-registry -r "$R0/r.db" add "$T/small.lora" -q
    # lsn DIR: ls --json of the registry in DIR, its folder written REG
    lsn() { lora-registry -r "$1/r.db" ls --json 2>&1 | sed "s#$1#REG#g"; }
    lsn "$R0" >"$T/ls0"
    checks=$((checks + 1))
    grep -q '"small"' "$T/ls0" || fail "lora-registry ls --json does not list the adapter added"

    # registry_same DIR: ls --json as before, verify clean
    registry_same() {
        checks=$((checks + 1))
        lsn "$1" >"$T/ls1"; cmp -s "$T/ls0" "$T/ls1" ||
            fail "lora-registry add, $how: the registry changed"
        checks=$((checks + 1))
        lora-registry -r "$1/r.db" verify -q >/dev/null 2>&1 || fail "lora-registry add, $how: verify fails"
    }
    rm -rf "$T/reg"; cp -r "$R0" "$T/reg"
    how="disk full (ulimit -f)"
    run sh -c 'ulimit -f 64; trap "" XFSZ; exec "$@"' sh lora-registry -r "$T/reg/r.db" add "$T/ref.lora"
    checks=$((checks + 1))
    [ "$rc" -eq 4 ] || fail "lora-registry add, $how: expected exit 4, got $rc"
    expect_err "^lora-registry: .*File too large"
    registry_same "$T/reg"
    checks=$((checks + 1))
    ! ls "$T/reg/blobs" | grep -q tmp ||
        fail "lora-registry add, $how: temporaries left in blobs/"

    if [ $have_ns = 1 ]; then
        need=$(kb "$R0" "$T/ref.lora")
        # the blob fails to fit, then (+16, +32 KiB) the database's commit
        for s in $((need / 2)) $((need - 8)) $((need + 16)) $((need + 32)); do
            how="disk full (tmpfs of $s KiB)"
            post='lora-registry -r "$FULL/reg/r.db" ls --json 2>&1 | sed "s#$FULL/reg#REG#g" >"$T/ns.ls1"
                  lora-registry -r "$FULL/reg/r.db" verify -q >/dev/null 2>&1; echo $? >"$T/ns.verify"
                  ls -A "$FULL/reg/blobs" >"$T/ns.blobs"'
            export post
            enospc lora-registry "$s" 'cp -r "$T/reg0" "$FULL/reg"' "" \
                lora-registry -r "$FULL/reg/r.db" add "$T/ref.lora" -q
            unset post
            rc=$(cat "$T/ns.rc" 2>/dev/null || echo 99)
            checks=$((checks + 1))
            [ "$(cat "$T/ns.verify" 2>/dev/null)" = 0 ] || fail "lora-registry add, $how: verify fails"
            if [ "$rc" -ne 0 ]; then
                checks=$((checks + 1))
                cmp -s "$T/ls0" "$T/ns.ls1" || fail "lora-registry add, $how: the registry changed"
                checks=$((checks + 1))
                ! grep -q tmp "$T/ns.blobs" || fail "lora-registry add, $how: temporaries left in blobs/"
            fi
        done
    fi

    # kill -9: verify clean, adapter fully present or absent, and every
    # blob under a final name holds the bytes its name says
    HASH=$(b2sum -l 256 "$T/ref.lora" | cut -d' ' -f1)
    check_registry() {
        pt=$1
        checks=$((checks + 1))
        lora-registry -r "$T/reg/r.db" verify -q >/dev/null 2>&1 ||
            fail "lora-registry add killed at point $pt: verify fails"
        checks=$((checks + 1))
        lsn "$T/reg" >"$T/ls1"
        if grep -q '"big"' "$T/ls1"; then
            checks=$((checks + 1))
            same "$T/ref.lora" "$T/reg/blobs/$HASH.lora" ||
                fail "lora-registry add killed at point $pt: listed, but its blob is not the archive"
        else
            checks=$((checks + 1))
            cmp -s "$T/ls0" "$T/ls1" || fail "lora-registry add killed at point $pt: registry changed"
        fi
        for b in "$T"/reg/blobs/*.lora; do
            case $b in *tmp*) continue ;; esac
            checks=$((checks + 1))
            [ "$(b2sum -l 256 "$b" | cut -d' ' -f1).lora" = "$(basename "$b")" ] ||
                fail "lora-registry add killed at point $pt: partial blob $b"
        done
    }
    setup='rm -rf $T/reg; cp -r $T/reg0 $T/reg'
    finals="$T/reg/blobs/$HASH.lora"
    kill_points lora-registry 20 check_registry lora-registry -r "$T/reg/r.db" add "$T/ref.lora" -q
    setup=
fi

# ---- a file shrinking under the mmap (SIGBUS) ---------------------------
# sigbus_sweep NAME STEP INPUT FILE OUT CMD...: copies of INPUT (a folder
# holding FILE) truncated to 4 KiB after 0, STEP, 2 STEP ... ms of CMD, until a run
# finishes first (at most 40 points).  Each run: exit 0 with OUT the same
# as $ref, or a non-signal failure with a "NAME: " message and neither
# OUT, OUT.receipt nor any temporary of them (the handler removes them).
# Over all sweeps at least one run must have met the SIGBUS, else they
# proved nothing (each tool's count is printed).
bus_total=0
sigbus_sweep() {
    name=$1 step=$2 src=$3 file=$4 out=$5; shift 5
    k=0 n_bus=0 n_err=0
    while [ $k -lt 40 ]; do
        rm -rf "$T/v"; cp -r "$src" "$T/v"
        case $out in "$T"/?*) rm -rf "$out" "$out".* ;; esac
        "$@" >/dev/null 2>"$T/bus.err" &
        pid=$!
        ms=$((k * step))
        sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
        truncate -s 4096 "$T/v/$file"
        wait $pid; r=$?
        checks=$((checks + 1))
        if [ $r -ge 128 ]; then
            fail "$name died of signal $((r - 128)) on an input truncated after $ms ms"
        elif [ $r -eq 0 ]; then
            [ -z "$out" ] || same "$ref" "$out" || fail "$name: exit 0 but $out is not the full output"
            break
        else
            grep -q "^$name: " "$T/bus.err" || fail "$name, truncated after $ms ms: exit $r without a message"
            if grep -q "^$name: an input file shrank or became unreadable while being read (SIGBUS); nothing was written$" "$T/bus.err"; then
                n_bus=$((n_bus + 1))
                checks=$((checks + 1))
                [ $r -eq 4 ] || fail "$name: SIGBUS message with exit $r"
            else
                n_err=$((n_err + 1))
            fi
            if [ -n "$out" ]; then
                checks=$((checks + 1))
                left=$(ls -d "$out" "$out".* 2>/dev/null)
                [ -z "$left" ] || fail "$name, truncated after $ms ms (exit $r): left $left"
            fi
        fi
        k=$((k + 1))
    done
    echo "$name: input truncated at $k points: $n_bus SIGBUS (exit 4), $n_err other clean errors"
    bus_total=$((bus_total + n_bus))
}
if have lora-inspect; then
    ran=1
    ref=
    sigbus_sweep lora-inspect 5 "$T/big/adapter" adapter_model.safetensors "" lora-inspect --check "$T/v"
fi
if have lora-merge && [ -d "$T/refdir" ]; then
    ref="$T/refdir"
    sigbus_sweep lora-merge 20 "$T/g/base" model.safetensors "$T/sb" \
        lora-merge "$T/v" -a "$T/g/adapter" -o "$T/sb" -q
fi

if have lora-inspect || have lora-merge; then
    checks=$((checks + 1))
    [ $bus_total -gt 0 ] || fail "no truncation point met the SIGBUS handler"
fi

[ $ran = 1 ] || { echo "SKIP: none of the writing tools is built yet"; exit 77; }
done_testing
