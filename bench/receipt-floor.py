# bench/receipt-floor.py - the information floor of a merge receipt,
# computed from the base and the adapters alone (PyTorch, float64), with
# none of liblora's code: what bench/merge holds lora-merge's receipt to.
#
#   python3 bench/receipt-floor.py BASE ADAPTER[:WEIGHT]... [--merged MERGED]
#                                   [--max-elements N]
#
# BASE and MERGED: a .safetensors file or a folder of them; ADAPTER a PEFT
# folder (adapter_config.json + adapter_model.safetensors).  For every base
# tensor an adapter targets (BF16, F16 or F32), and every element x of it:
#   d  = sum over adapters of (B @ A) * scale   (float64; scale = alpha/r
#        times WEIGHT, alpha/sqrt(r) with use_rslora; transposed for
#        fan_in_fan_out)
#   m  = x + d rounded to nearest-even in the base dtype, from the exact sum
#        (TwoSum: the double sum s and its error e; e breaks the tie when s
#        lies exactly half-way), by float64 arithmetic on the format's
#        quantum, not torch's casts (double -> bfloat16 goes through float32
#        there: a double rounding)
#   n  = how many base values (bit patterns, in sign-magnitude order, so -0
#        and +0 are two) merge to the same m with the same d: the run of
#        neighbours x +- k ulp around x that merge to m (a contiguous run,
#        as the rounding is monotonic in x).
# An element is ambiguous when n > 1; unmerging it needs log2(n) bits when
# x is spread evenly over its run, so the floors are
#   one bit each : (ambiguous elements) / 8 bytes
#   entropy      : sum over ambiguous elements of log2(n) / 8 bytes.
# Runs of 4, 8, ... members happen where x + d lands two or more binades
# above x; "one bit each" undercounts them.
#
# With --max-elements N (default 0: all) a deterministic sample: every
# k-th row of each tensor (k the smallest stride that keeps the sample at or
# under N elements), starting at row 0; the output says so and gives the
# sampled count.  With --merged, m is also compared with the merged file's
# bytes at the same elements (a check that this model is lora-merge's merge:
# the mismatches are printed, and should be 0).
#
# Output: one JSON object on stdout (elements, sampled, ambiguous,
# floor_bits_bytes, floor_entropy_bytes, per-parameter floors, run-length
# histogram by powers of two, mismatches).
import json, math, os, struct, sys

import torch

torch.set_num_threads(max(1, int(os.environ.get("FLOOR_THREADS", "2"))))

FORMATS = {  # dtype: (mantissa bits, exponent bias, exponent bits)
    "BF16": (7, 127, 8),
    "F16": (10, 15, 5),
    "F32": (23, 127, 8),
}


class ST:
    """One safetensors file, tensors read on demand through a file handle."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "rb")
        n = struct.unpack("<Q", self.f.read(8))[0]
        self.hdr = json.loads(self.f.read(n))
        self.hdr.pop("__metadata__", None)
        self.base = 8 + n

    def rows(self, name, r0, r1, stride=1):
        """Rows r0, r0+stride, ... < r1 of a 2-D tensor, as raw little-endian ints."""
        v = self.hdr[name]
        cols = v["shape"][1]
        dt = v["dtype"]
        size = {"BF16": 2, "F16": 2, "F32": 4}[dt]
        out = []
        for r in range(r0, r1, stride):
            self.f.seek(self.base + v["data_offsets"][0] + r * cols * size)
            out.append(self.f.read(cols * size))
        b = bytearray(b"".join(out))
        t = torch.frombuffer(b, dtype=torch.int16 if size == 2 else torch.int32)
        return t.reshape(len(out), cols)

    def tensor(self, name):
        v = self.hdr[name]
        self.f.seek(self.base + v["data_offsets"][0])
        b = bytearray(self.f.read(v["data_offsets"][1] - v["data_offsets"][0]))
        dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[v["dtype"]]
        return torch.frombuffer(b, dtype=dt).reshape(v["shape"]).double()


def open_all(path):
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        sys.exit("receipt-floor: no .safetensors in %s" % path)
    where = {}
    for p in files:
        st = ST(p)
        for k in st.hdr:
            where[k] = st
    return where


def load_adapter(spec):
    path, weight = spec, 1.0
    if ":" in spec and not os.path.exists(spec):
        path, w = spec.rsplit(":", 1)
        weight = float(w)
    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora"):
        sys.exit("receipt-floor: %s: rank/alpha patterns and DoRA are not modelled" % path)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = (alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r) * weight
    st = ST(os.path.join(path, "adapter_model.safetensors"))
    mods = {}
    for k in st.hdr:
        if ".lora_A." not in k:
            continue
        mod = k.split(".lora_A.")[0]
        if mod.startswith("base_model.model."):
            mod = mod[len("base_model.model."):]
        mods[mod + ".weight"] = (st.tensor(k), st.tensor(k.replace(".lora_A.", ".lora_B.")),
                                 scale, bool(cfg.get("fan_in_fan_out")))
    return mods


def decode(raw, dt):
    """Raw ints of a dtype -> float64 values."""
    if dt == "BF16":
        return (raw.to(torch.int32) << 16).view(torch.float32).double()
    if dt == "F16":
        return raw.view(torch.float16).double()
    return raw.view(torch.float32).double()


def to_key(raw, dt):
    """Bit patterns -> positions in sign-magnitude order (..., -0, +0, ...)."""
    bits = 16 if dt != "F32" else 32
    u = raw.to(torch.int64) & ((1 << bits) - 1)
    sign = 1 << (bits - 1)
    return torch.where(u >= sign, (sign - 1) - (u - sign), u + sign)


def from_key(key, dt):
    bits = 16 if dt != "F32" else 32
    sign = 1 << (bits - 1)
    u = torch.where(key >= sign, key - sign, (sign - 1) - key + sign)
    if bits == 16:
        u = torch.where(u >= sign, u - (1 << 16), u)
        return u.to(torch.int16)
    u = torch.where(u >= sign, u - (1 << 32), u)
    return u.to(torch.int32)


def finite_key(key, dt):
    """Whether a key is a finite value of the format."""
    m, bias, eb = FORMATS[dt]
    bits = 1 + eb + m
    sign = 1 << (bits - 1)
    mag = torch.where(key >= sign, key - sign, (sign - 1) - key)
    return (key >= 0) & (key < (1 << bits)) & (mag < (((1 << eb) - 1) << m))


def round_to(x, d, dt):
    """x + d (exact) rounded to nearest-even in dt: (value as float64, sign bit).
    The quantum q of |s|'s binade (at least the format's smallest) is built
    from s's exponent bits, so |s| / q is exact and its fraction says which
    way to round."""
    m, bias, eb = FORMATS[dt]
    s = x + d
    bp = s - x
    e = (x - (s - bp)) + (d - bp)  # TwoSum: x + d == s + e exactly
    sb = torch.signbit(s)
    a = s.abs()
    qe = torch.clamp((a.view(torch.int64) >> 52) - 1023, min=1 - bias) - m
    t = a * ((1023 - qe) << 52).view(torch.float64)  # |s| / q, exact
    fl = torch.floor(t)
    fr = t - fl
    ea = torch.where(sb, -e, e)  # the error in the direction of |s|
    up = (fr > 0.5) | ((fr == 0.5) & ((ea > 0) | ((ea == 0) & (fl.to(torch.int64) & 1).bool())))
    r = (fl + up) * ((qe + 1023) << 52).view(torch.float64)
    r.masked_fill_(r > (2.0 - 2.0 ** -m) * 2.0 ** bias, math.inf)
    # sign of the result: s's (an exact zero sum has the sign IEEE gives s)
    return torch.where(sb, -r, r), sb


def merges_to(key, d, mval, msign, dt):
    """Whether base value KEY (a key tensor) merges to (mval, msign) with d."""
    ok = finite_key(key, dt)
    kk = torch.where(ok, key, torch.zeros_like(key))
    v, sb = round_to(decode(from_key(kk, dt), dt), d, dt)
    return ok & (v == mval) & (sb == msign)


def run_len(key, d, mval, msign, dt, direction):
    """How many neighbours key+direction*k (k = 1, 2, ...) also merge to m:
    the run is contiguous (rounding is monotonic in x), so gallop to a k
    that does not, then bisect; runs near zero reach tens of thousands of
    members (tiny x, all of whose neighbours down to 0 merge to one m)."""
    same = merges_to(key + direction, d, mval, msign, dt)  # k = 1, on whole tensors
    good = same.to(torch.int64)  # largest k known to merge to m
    bad = (~same).to(torch.int64)  # smallest k known not to (0: not found yet)
    idx = torch.nonzero(same).reshape(-1)  # the few (a few %) still running
    k = 2
    while idx.numel():  # gallop: k = 2, 4, 8, ...
        same = merges_to(key[idx] + direction * k, d[idx], mval[idx], msign[idx], dt)
        good[idx[same]] = k
        bad[idx[~same]] = k
        idx = idx[same]
        k *= 2
    idx = torch.nonzero(bad - good > 1).reshape(-1)
    while idx.numel():  # bisect between good and bad
        mid = (good[idx] + bad[idx]) // 2
        same = merges_to(key[idx] + direction * mid, d[idx], mval[idx], msign[idx], dt)
        good[idx] = torch.where(same, mid, good[idx])
        bad[idx] = torch.where(same, bad[idx], mid)
        idx = idx[bad[idx] - good[idx] > 1]
    return good


def main(argv):
    args, merged, maxel = [], None, 0
    i = 0
    while i < len(argv):
        if argv[i] == "--merged":
            merged = argv[i + 1]; i += 2
        elif argv[i] == "--max-elements":
            maxel = int(argv[i + 1]); i += 2
        else:
            args.append(argv[i]); i += 1
    if len(args) < 2:
        sys.exit("usage: receipt-floor.py BASE ADAPTER[:WEIGHT]... [--merged MERGED] "
                 "[--max-elements N]")
    base = open_all(args[0])
    mrg = open_all(merged) if merged else None
    terms = {}
    for spec in args[1:]:
        for name, t in load_adapter(spec).items():
            terms.setdefault(name, []).append(t)
    names = sorted(n for n in terms if n in base)
    missing = sorted(n for n in terms if n not in base)
    if missing:
        sys.exit("receipt-floor: adapter targets not in the base: %s" % ", ".join(missing[:5]))
    total = sum(base[n].hdr[n]["shape"][0] * base[n].hdr[n]["shape"][1] for n in names)
    stride = 1
    while maxel and total / stride > maxel:
        stride += 1
    res = dict(elements=total, stride=stride, sampled=0, ambiguous=0, floor_bits_bytes=0.0,
               floor_entropy_bytes=0.0, mismatches=0, runs={}, dtypes=[])
    for name in names:
        st = base[name]
        dt = st.hdr[name]["dtype"]
        if dt not in FORMATS:
            sys.exit("receipt-floor: %s: dtype %s not modelled" % (name, dt))
        if dt not in res["dtypes"]:
            res["dtypes"].append(dt)
        rows, cols = st.hdr[name]["shape"]
        chunk = max(stride, (1 << 21) // cols // stride * stride)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            sel = torch.arange(r0, r1, stride)
            raw = st.rows(name, r0, r1, stride)
            d = torch.zeros(raw.shape, dtype=torch.float64)
            for A, B, scale, fifo in terms[name]:
                if fifo:  # W is (in, out): delta = (B @ A)^T
                    d += (A[:, sel].t() @ B.t()) * scale
                else:
                    d += (B[sel] @ A) * scale
            key = to_key(raw, dt).reshape(-1)
            x = decode(raw, dt).reshape(-1)
            d = d.reshape(-1)
            mval, msign = round_to(x, d, dt)
            if mrg is not None:
                mraw = mrg[name].rows(name, r0, r1, stride).reshape(-1)
                mx = decode(mraw, mrg[name].hdr[name]["dtype"])
                bad = ~(((mx == mval) & (torch.signbit(mx) == msign)) |
                        (torch.isnan(mx) & torch.isnan(mval)))
                res["mismatches"] += int(bad.sum())
            n = 1 + run_len(key, d, mval, msign, dt, 1) + run_len(key, d, mval, msign, dt, -1)
            amb = n > 1
            res["sampled"] += key.numel()
            res["ambiguous"] += int(amb.sum())
            na = n[amb].double()
            res["floor_entropy_bytes"] += float(torch.log2(na).sum()) / 8
            vals, cnts = torch.unique(n[amb], return_counts=True)
            for v, c in zip(vals.tolist(), cnts.tolist()):
                b = max(1, (v - 1).bit_length())  # runs of 2^(b-1)+1 .. 2^b members
                lab = "2" if b == 1 else "%d-%d" % ((1 << (b - 1)) + 1, 1 << b)
                res["runs"][lab] = res["runs"].get(lab, 0) + c
    res["floor_bits_bytes"] = res["ambiguous"] / 8
    s = res["sampled"] or 1
    res["ambiguous_fraction"] = res["ambiguous"] / s
    res["floor_bits_per_param"] = res["floor_bits_bytes"] / s
    res["floor_entropy_per_param"] = res["floor_entropy_bytes"] / s
    res["runs"] = dict(sorted(res["runs"].items(), key=lambda kv: int(kv[0].split("-")[-1])))
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
