#!/bin/sh
# merge.sh - lora-merge / lora-unmerge end to end on generated checkpoints
# (tests/mkfixture): bit-exact round trips for F32, F16, BF16; several
# adapters with weights; sharded in and out; task switch; --check;
# refusals (wrong adapter -> 3 and nothing written, OUT = input, merging
# twice); a corrupted receipt; kill -9 midway leaves nothing under OUT.
. "$TOP_SRCDIR/tests/lib.sh"
MK="$TOP_BUILDDIR/tests/mkfixture"
ALL=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj

# usage and help
expect 0 lora-merge --help
expect_out "Usage: lora-merge"
expect 2 lora-merge
expect 2 lora-unmerge --check x -a y
expect_err "needs --receipt or --base"
expect 0 lora-unmerge --version

for dt in F32 F16 BF16; do
    "$MK" llama "$T/$dt" --dtype $dt --targets $ALL --seed 3 >/dev/null || fail "mkfixture $dt"
    expect 0 lora-merge -q "$T/$dt/base" -a "$T/$dt/adapter" -o "$T/$dt/m" -j 2
    [ -f "$T/$dt/m.receipt" ] || fail "$dt: no receipt"
    cmp -s "$T/$dt/m/model.safetensors" "$T/$dt/base/model.safetensors" && fail "$dt: merge changed nothing"
    [ -f "$T/$dt/m/config.json" ] || fail "$dt: config.json not copied"
    expect 0 lora-unmerge -q "$T/$dt/m" -a "$T/$dt/adapter" --receipt "$T/$dt/m.receipt" -o "$T/$dt/b"
    cmp -s "$T/$dt/b/model.safetensors" "$T/$dt/base/model.safetensors" || fail "$dt: unmerge not bit-exact"
    # --check with the receipt and against the base
    expect 0 lora-unmerge --check "$T/$dt/m" -a "$T/$dt/adapter" --receipt "$T/$dt/m.receipt" --json
    expect_out '"all_exact": true'
    # without the receipt: the plain subtraction is not exact, and --check says so
    expect 1 lora-unmerge --check "$T/$dt/m" -a "$T/$dt/adapter" --base "$T/$dt/base"
    expect_out "NOT all exact"
    expect 0 lora-unmerge -q "$T/$dt/m" -a "$T/$dt/adapter" -o "$T/$dt/nb"
    cmp -s "$T/$dt/nb/model.safetensors" "$T/$dt/base/model.safetensors" && fail "$dt: plain unmerge exact?"
done

# determinism and thread count: same bytes with -j 1
expect 0 lora-merge -q "$T/BF16/base" -a "$T/BF16/adapter" -o "$T/j1" -j 1
cmp -s "$T/j1/model.safetensors" "$T/BF16/m/model.safetensors" || fail "-j 1 and -j 2 differ"
cmp -s "$T/j1.receipt" "$T/BF16/m.receipt" || fail "receipts differ between -j 1 and -j 2"

# several adapters with weights, in a single-file form
"$MK" llama "$T/two" --dtype BF16 --targets q_proj,v_proj --seed 9 --no-base >/dev/null
expect 0 lora-merge -q "$T/BF16/base/model.safetensors" -a "$T/BF16/adapter:0.5" -a "$T/two/adapter:-1.25" -o "$T/w.safetensors"
[ -f "$T/w.safetensors.receipt" ] || fail "no receipt beside a file output"
expect 0 lora-unmerge -q "$T/w.safetensors" -a "$T/two/adapter" -a "$T/BF16/adapter" --receipt "$T/w.safetensors.receipt" -o "$T/wb.safetensors"
cmp -s "$T/wb.safetensors" "$T/BF16/base/model.safetensors" || fail "two adapters: unmerge not exact"
# a weight different from the receipt's is refused
expect 2 lora-unmerge -q "$T/w.safetensors" -a "$T/two/adapter:2" -a "$T/BF16/adapter" --receipt "$T/w.safetensors.receipt" -o "$T/x.safetensors"
[ -e "$T/x.safetensors" ] && fail "refused unmerge wrote output"

# merging the same adapter again is refused, --force allows it
expect 3 lora-merge -q "$T/BF16/m" -a "$T/BF16/adapter" -o "$T/again"
expect_err "already records a merge"
[ -e "$T/again" ] && fail "refused merge left OUT"
expect 0 lora-merge -q --force --no-receipt "$T/BF16/m" -a "$T/BF16/adapter" -o "$T/again"

# task switch: unmerge the old adapter with its receipt, merge another, one pass
expect 0 lora-merge -q "$T/BF16/m" --unmerge "$T/BF16/adapter" --receipt "$T/BF16/m.receipt" -a "$T/two/adapter" -o "$T/sw"
expect 0 lora-merge -q "$T/BF16/base" -a "$T/two/adapter" -o "$T/direct"
cmp -s "$T/sw/model.safetensors" "$T/direct/model.safetensors" || fail "task switch differs from a direct merge"
cmp -s "$T/sw.receipt" "$T/direct.receipt" || fail "task switch receipt differs"

# OUT equal to an input
expect 2 lora-merge -q "$T/BF16/base" -a "$T/BF16/adapter" -o "$T/BF16/base"
expect_err "output is the input"

# the wrong adapter for a base: exit 3, nothing written
"$MK" llama "$T/big" --dtype BF16 --hidden 96 --intermediate 200 --no-base >/dev/null
expect 3 lora-merge -q "$T/BF16/base" -a "$T/big/adapter" -o "$T/wrong"
[ -e "$T/wrong" ] || [ -e "$T/wrong.receipt" ] && fail "wrong adapter: output written"
ls "$T" | grep -q 'wrong.*tmp' && fail "wrong adapter: temporary left"

# a corrupted receipt: refused, nothing written
cp "$T/BF16/m.receipt" "$T/bad.receipt"
printf 'XXXX' | dd of="$T/bad.receipt" bs=1 seek=20 conv=notrunc 2>/dev/null
expect 3 lora-unmerge -q "$T/BF16/m" -a "$T/BF16/adapter" --receipt "$T/bad.receipt" -o "$T/bb"
[ -e "$T/bb" ] && fail "corrupted receipt: output written"
head -c 100 "$T/BF16/m.receipt" > "$T/short.receipt"
expect 3 lora-unmerge -q "$T/BF16/m" -a "$T/BF16/adapter" --receipt "$T/short.receipt" -o "$T/bb"
# a receipt for another checkpoint (merged twice): hashes differ -> 1, nothing written
expect 1 lora-unmerge -q "$T/again" -a "$T/BF16/adapter" --receipt "$T/BF16/m.receipt" -o "$T/bb"
expect_err "receipt of another merge"
[ -e "$T/bb" ] && fail "hash mismatch: output written"

# sharded in and out (split with python3 when it is there)
if command -v python3 >/dev/null 2>&1; then
    python3 - "$T/BF16/base" "$T/sh" <<'PY' || fail "sharding"
import json, os, shutil, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
with open(src + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; hdr = json.loads(f.read(n)); data = f.read()
hdr.pop("__metadata__", None)
names = sorted(hdr); half = len(names) // 2
wm = {}
for i, part in enumerate([names[:half], names[half:]]):
    fn = "model-%05d-of-00002.safetensors" % (i + 1)
    h, off, blobs = {}, 0, []
    for k in part:
        a, b = hdr[k]["data_offsets"]; blob = data[a:b]
        h[k] = {"dtype": hdr[k]["dtype"], "shape": hdr[k]["shape"], "data_offsets": [off, off + len(blob)]}
        off += len(blob); blobs.append(blob); wm[k] = fn
    hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
    with open(dst + "/" + fn, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
json.dump({"metadata": {"total_size": len(data)}, "weight_map": wm}, open(dst + "/model.safetensors.index.json", "w"))
shutil.copy(src + "/config.json", dst)
PY
    expect 0 lora-merge -q "$T/sh" -a "$T/BF16/adapter" -o "$T/shm"
    [ -f "$T/shm/model-00001-of-00002.safetensors" ] && [ -f "$T/shm/model-00002-of-00002.safetensors" ] || fail "shard layout not kept"
    [ -f "$T/shm/model.safetensors.index.json" ] || fail "no index written"
    [ -f "$T/shm/config.json" ] || fail "config.json not copied"
    expect 0 lora-unmerge -q "$T/shm/model.safetensors.index.json" -a "$T/BF16/adapter" --receipt "$T/shm.receipt" -o "$T/shb"
    # same tensors, same bytes (the headers are ours, not python's)
    python3 - "$T/sh" "$T/shb" <<'PY' || fail "sharded unmerge: tensors differ from the base"
import json, struct, sys
def tensors(d):
    idx = json.load(open(d + "/model.safetensors.index.json"))
    out = {}
    for fn in sorted(set(idx["weight_map"].values())):
        with open(d + "/" + fn, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
        h.pop("__metadata__", None)
        for k, v in h.items():
            a, b = v["data_offsets"]; out[k] = (fn, v["dtype"], v["shape"], data[a:b])
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(0 if a == b else 1)
PY
    checks=$((checks + 1))
    expect 0 lora-unmerge --check "$T/shm" -a "$T/BF16/adapter" --receipt "$T/shm.receipt" --base "$T/sh"
    # --shard: one shard at a time (one job per machine) gives the same
    # files as the whole merge, and unmerges shard by shard to the base's
    mkdir "$T/sh1" "$T/shb1"
    for k in 1 2; do
        f=model-0000$k-of-00002.safetensors
        expect 0 lora-merge -q "$T/sh/model.safetensors.index.json" --shard "$f" -a "$T/BF16/adapter" -o "$T/sh1/$f"
        cmp -s "$T/sh1/$f" "$T/shm/$f" || fail "--shard $f: not the bytes of the whole merge"
        [ -f "$T/sh1/$f.receipt" ] || fail "--shard $f: no receipt"
    done
    [ -e "$T/sh1/model.safetensors.index.json" ] && fail "--shard wrote an index"
    cp "$T/sh/model.safetensors.index.json" "$T/sh1/"
    for k in 1 2; do
        f=model-0000$k-of-00002.safetensors
        expect 0 lora-unmerge -q "$T/sh1" --shard "$f" -a "$T/BF16/adapter" --receipt "$T/sh1/$f.receipt" -o "$T/shb1/$f"
        cmp -s "$T/shb1/$f" "$T/shb/$f" || fail "--shard $f: unmerge is not the whole unmerge"
        checks=$((checks + 2))
    done
    # a shard's receipt does not fit the other shard
    expect 1 lora-unmerge -q "$T/sh1" --shard model-00002-of-00002.safetensors -a "$T/BF16/adapter" \
        --receipt "$T/sh1/model-00001-of-00002.safetensors.receipt" -o "$T/shb1/x"
    [ -e "$T/shb1/x" ] && fail "--shard with the wrong receipt wrote OUT"
    expect 2 lora-merge -q "$T/sh" --shard model-00009-of-00002.safetensors -a "$T/BF16/adapter" -o "$T/sh1/x"
    expect_err "no shard named model-00009-of-00002.safetensors"
    [ -e "$T/sh1/x" ] && fail "--shard of a missing shard wrote OUT"
    expect 2 lora-merge -q "$T/BF16/base" --shard model.safetensors -a "$T/BF16/adapter" -o "$T/sh1/x"
fi

# kill -9 midway: nothing under OUT
# (8 layers, 95 MB: the merge takes about 0.45 s on one thread here, and
# 4 layers no longer outlasted the sleep)
"$MK" llama "$T/large" --dtype F32 --hidden 512 --intermediate 1376 --layers 8 --targets $ALL >/dev/null
lora-merge -q -j 1 "$T/large/base" -a "$T/large/adapter" -o "$T/killed" &
pid=$!
sleep 0.2
checks=$((checks + 1))
kill -9 $pid 2>/dev/null || fail "the merge ended before it could be killed (make the base larger)"
wait $pid 2>/dev/null
[ -e "$T/killed" ] && fail "killed merge left OUT"
[ -e "$T/killed.receipt" ] && fail "killed merge left the receipt"

done_testing
