#!/bin/sh
# restore.sh - lora-unmerge with the receipt gives back the base's exact
# bytes (cmp, sha256) whatever wrote the base (lora-receipt(5)): header
# key order sorted, reversed or in data order, data in another order,
# __metadata__ absent, first or last, serde / Python / indented JSON,
# headers padded to 8, 64 or 4096 bytes or with extra spaces; single
# files, folders, sharded checkpoints with their index, a --dtype merge.
# The merged file keeps the base's layout.  Forged receipts (a
# correction changed and every hash of the receipt recomputed) and
# mismatched receipt/output pairs are refused with exit 1, nothing
# written; signed receipts (--sign-receipt, --receipt-key).
. "$TOP_SRCDIR/tests/lib.sh"
MK="$TOP_BUILDDIR/tests/mkfixture"
ML="$TOP_BUILDDIR/tests/mklayout"

"$MK" llama "$T/f" --dtype BF16 --targets q_proj,v_proj,down_proj --seed 5 >/dev/null ||
    { echo "mkfixture failed" >&2; exit 99; }
"$MK" llama "$T/g" --dtype BF16 --targets q_proj,k_proj --seed 8 --no-base >/dev/null ||
    { echo "mkfixture failed" >&2; exit 99; }
SRC="$T/f/base/model.safetensors"
AD="$T/f/adapter"

# same_sha A B: the sha256 of both files are the same
same_sha() {
    [ "$(sha256sum <"$1")" = "$(sha256sum <"$2")" ]
}

# The checks must be able to fail: a relayout is not the source's bytes.
"$ML" relayout "$SRC" "$T/x.st" --keys reverse || fail "mklayout relayout"
checks=$((checks + 1))
same_sha "$SRC" "$T/x.st" && fail "a relayout has the source's bytes: the test cannot fail"


# roundtrip NAME BASEFILE [merge options]: merge into a single file,
# unmerge with the receipt, compare bytes; the merged file keeps the
# base's layout (key order, offsets, metadata other than ours).
roundtrip() {
    name=$1 base=$2; shift 2
    rm -f "$T/m.st" "$T/m.st.receipt" "$T/u.st"
    expect 0 lora-merge -q "$base" -a "$AD" -o "$T/m.st" "$@"
    expect 0 lora-unmerge -q "$T/m.st" -a "$AD" --receipt "$T/m.st.receipt" -o "$T/u.st"
    checks=$((checks + 1))
    cmp -s "$base" "$T/u.st" || fail "$name: the restored file is not the base's bytes"
    checks=$((checks + 1))
    same_sha "$base" "$T/u.st" || fail "$name: sha256 differs"
}

# keeps NAME BASEFILE MERGED: same entries in the same order at the same
# offsets, same metadata keys (a base without metadata gets "format":"pt"
# with ours, as transformers needs)
keeps() {
    "$ML" order "$2" >"$T/o1"; "$ML" order "$3" >"$T/o2"
    if ! grep -q '^meta:' "$T/o1"; then
        checks=$((checks + 1))
        [ "$(head -n 1 "$T/o2")" = meta:format ] || fail "$1: metadata added without format"
        sed -i '1d' "$T/o2"
    fi
    checks=$((checks + 1))
    cmp -s "$T/o1" "$T/o2" || fail "$1: the merge did not keep the base's layout"
}

i=0
for v in "--keys sorted" "--keys reverse" "--keys data --data reverse" \
         "--keys sorted --data reverse --meta last" "--meta none" "--meta first --keys reverse" \
         "--style python" "--style pretty --meta last" "--align 64" "--align 4096 --style python" \
         "--pad 13" "--pad 100 --keys reverse --data reverse --meta none"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    "$ML" relayout "$SRC" "$T/b$i.st" $v || fail "mklayout $v"
    roundtrip "layout '$v'" "$T/b$i.st"
    keeps "layout '$v'" "$T/b$i.st" "$T/m.st"
done
# the writer's own layout too, and reversible rounding
roundtrip "lora-tools layout" "$SRC"
roundtrip "reversible rounding" "$T/b3.st" --rounding reversible
# a dtype change cannot keep the offsets; the restore is still exact
roundtrip "--dtype F32" "$T/b2.st" --dtype F32

# an adapter whose modules_to_save replaces a tensor: the receipt keeps
# the base's values, the unmerge writes them back (also after --dtype)
cp -r "$AD" "$T/sad"
"$ML" addsaved "$T/sad" "$SRC" model.norm.weight || fail "mklayout addsaved"
for opt in "--dtype F32" ""; do
    rm -f "$T/ms.st" "$T/ms.st.receipt" "$T/us.st"
    # shellcheck disable=SC2086
    expect 0 lora-merge -q "$T/b2.st" -a "$T/sad" -o "$T/ms.st" $opt
    expect 0 lora-unmerge -q "$T/ms.st" -a "$T/sad" --receipt "$T/ms.st.receipt" -o "$T/us.st"
    checks=$((checks + 1))
    cmp -s "$T/b2.st" "$T/us.st" || fail "modules_to_save $opt: the replaced tensor not restored"
done
# the merge did replace it (the test can fail)
checks=$((checks + 1))
[ "$("$ML" order "$T/b2.st" model.norm.weight)" = "$("$ML" order "$T/ms.st" model.norm.weight)" ] &&
    fail "modules_to_save: the merge did not replace the tensor"

# a folder (config.json travels)
mkdir "$T/fold"
"$ML" relayout "$SRC" "$T/fold/model.safetensors" --keys reverse --style python --meta last
cp "$T/f/base/config.json" "$T/fold/"
expect 0 lora-merge -q "$T/fold" -a "$AD" -o "$T/fm"
expect 0 lora-unmerge -q "$T/fm" -a "$AD" --receipt "$T/fm.receipt" -o "$T/fu"
checks=$((checks + 1))
cmp -s "$T/fold/model.safetensors" "$T/fu/model.safetensors" || fail "folder: not restored byte for byte"

# sharded, the index as transformers writes it: merge keeps it, unmerge
# restores every shard and the index
"$ML" shard "$T/b2.st" "$T/sh" 3 --style python || fail "mklayout shard"
cp "$T/f/base/config.json" "$T/sh/"
expect 0 lora-merge -q "$T/sh" -a "$AD" -o "$T/shm"
checks=$((checks + 1))
cmp -s "$T/sh/model.safetensors.index.json" "$T/shm/model.safetensors.index.json" ||
    fail "sharded: the merge rewrote the index"
expect 0 lora-unmerge -q "$T/shm" -a "$AD" --receipt "$T/shm.receipt" -o "$T/shu"
for f in "$T"/sh/*; do
    checks=$((checks + 1))
    cmp -s "$f" "$T/shu/${f##*/}" || fail "sharded: ${f##*/} not restored byte for byte"
done
# with a dtype change the merged index is rewritten; the receipt restores it
expect 0 lora-merge -q "$T/sh" -a "$AD" -o "$T/shd" --dtype F32
expect 0 lora-unmerge -q "$T/shd" -a "$AD" --receipt "$T/shd.receipt" -o "$T/shdu"
checks=$((checks + 1))
diff -r -q "$T/sh" "$T/shdu" >/dev/null || fail "sharded --dtype F32: not restored byte for byte"
# one shard at a time gives the same files as the whole merge
f=model-00002-of-00003.safetensors
expect 0 lora-merge -q "$T/sh/model.safetensors.index.json" --shard "$f" -a "$AD" -o "$T/one.st"
checks=$((checks + 1))
cmp -s "$T/one.st" "$T/shm/$f" || fail "--shard: not the bytes of the whole merge"

# ---- receipts that are not the output's ------------------------------
# a forged receipt: one correction changed, every hash it holds (the
# tensor's base hash too) recomputed; only the merged file's own lora_base
# can tell, and does
expect 0 lora-merge -q "$T/b1.st" -a "$AD" -o "$T/m.st"
"$ML" forge "$T/m.st.receipt" "$T/m.st" "$AD" "$T/forged.receipt" || fail "mklayout forge"
expect 1 lora-unmerge -q "$T/m.st" -a "$AD" --receipt "$T/forged.receipt" -o "$T/fx.st"
expect_err "not the base this merged file records"
[ -e "$T/fx.st" ] && fail "forged receipt: output written"
expect 1 lora-unmerge --check "$T/m.st" -a "$AD" --receipt "$T/forged.receipt"
# a receipt of another merge of the same base (another adapter)
expect 0 lora-merge -q "$T/b1.st" -a "$T/g/adapter" -o "$T/m2.st"
expect 1 lora-unmerge -q "$T/m.st" -a "$AD" --receipt "$T/m2.st.receipt" -o "$T/fx.st"
expect_err "receipt of another merge"
[ -e "$T/fx.st" ] && fail "another merge's receipt: output written"

# a re-merge killed between the output's rename and the receipt's: the
# new output beside the old receipt is refused, naming RECEIPT.new,
# which restores it
cp "$T/m.st" "$T/keep.st"
cp "$T/m.st.receipt" "$T/keep.receipt"
(LORA_FAULT_POINT=merge-between-renames exec lora-merge -q --force "$T/b1.st" -a "$T/g/adapter" \
    -o "$T/m.st") >/dev/null 2>&1
checks=$((checks + 1))
cmp -s "$T/m.st" "$T/m2.st" || fail "fault point: the new output is not in place"
checks=$((checks + 1))
cmp -s "$T/m.st.receipt" "$T/keep.receipt" || fail "fault point: the old receipt is gone"
expect 1 lora-unmerge -q "$T/m.st" -a "$T/g/adapter" --receipt "$T/m.st.receipt" -o "$T/fx.st"
expect_err "receipt of this file is .*m.st.receipt.new"
[ -e "$T/fx.st" ] && fail "mismatched pair: output written"
mv "$T/m.st.receipt.new" "$T/m.st.receipt"
expect 0 lora-unmerge -q "$T/m.st" -a "$T/g/adapter" --receipt "$T/m.st.receipt" -o "$T/fx.st"
checks=$((checks + 1))
cmp -s "$T/fx.st" "$T/b1.st" || fail "after renaming RECEIPT.new: not restored"
# killed before the output's rename: the old pair stands, and matches
rm -f "$T/m.st.receipt.new"
cp "$T/keep.st" "$T/m.st"; cp "$T/keep.receipt" "$T/m.st.receipt"
(LORA_FAULT_POINT=merge-before-output exec lora-merge -q --force "$T/b1.st" -a "$T/g/adapter" \
    -o "$T/m.st") >/dev/null 2>&1
expect 0 lora-unmerge -q "$T/m.st" -a "$AD" --receipt "$T/m.st.receipt" -o "$T/fy.st"
checks=$((checks + 1))
cmp -s "$T/fy.st" "$T/b1.st" || fail "killed before the output: the old pair does not restore"

# ---- signed receipts ----------------------------------------------------
if command -v lora-pack >/dev/null 2>&1; then
    expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub"
    expect 0 lora-pack keygen -W -s "$T/k2.sec" -p "$T/k2.pub"
    rm -f "$T/s.st" "$T/s.st.receipt"
    expect 0 lora-merge -q "$T/b1.st" -a "$AD" -o "$T/s.st" --sign-receipt "$T/k.sec"
    [ -f "$T/s.st.receipt.minisig" ] || fail "no RECEIPT.minisig"
    expect 0 lora-unmerge -q "$T/s.st" -a "$AD" --receipt "$T/s.st.receipt" --receipt-key "$T/k.pub" -o "$T/su.st"
    checks=$((checks + 1))
    cmp -s "$T/su.st" "$T/b1.st" || fail "signed receipt: not restored"
    if command -v minisign >/dev/null 2>&1; then
        expect 0 minisign -V -q -p "$T/k.pub" -m "$T/s.st.receipt"
    fi
    expect 1 lora-unmerge -q "$T/s.st" -a "$AD" --receipt "$T/s.st.receipt" --receipt-key "$T/k2.pub" -o "$T/sx.st"
    [ -e "$T/sx.st" ] && fail "wrong key: output written"
    cp "$T/forged.receipt" "$T/fs.receipt"; cp "$T/s.st.receipt.minisig" "$T/fs.receipt.minisig"
    expect 1 lora-unmerge -q "$T/s.st" -a "$AD" --receipt "$T/fs.receipt" --receipt-key "$T/k.pub" -o "$T/sx.st"
    expect_err "signature"
    # a signed re-merge killed between the renames: the old signed pair
    # still verifies, and the new OUT beside it is refused naming RECEIPT.new
    (LORA_FAULT_POINT=merge-between-renames exec lora-merge -q "$T/b1.st" -a "$T/g/adapter" \
        -o "$T/s.st" --sign-receipt "$T/k.sec") >/dev/null 2>&1
    expect 1 lora-unmerge -q "$T/s.st" -a "$T/g/adapter" --receipt "$T/s.st.receipt" --receipt-key "$T/k.pub" -o "$T/sx.st"
    expect_err "receipt of this file is .*s.st.receipt.new"
    [ -e "$T/sx.st" ] && fail "signed, mismatched pair: output written"
    rm -f "$T/s.st.receipt.minisig"
    expect 3 lora-unmerge -q "$T/s.st" -a "$AD" --receipt "$T/s.st.receipt" --receipt-key "$T/k.pub" -o "$T/sx.st"
    expect_err "minisig"
    [ -e "$T/sx.st" ] && fail "unsigned receipt: output written"
fi

done_testing
