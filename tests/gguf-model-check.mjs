// tests/gguf-model-check.mjs - an independent reading of a GGUF model
// that lora-merge wrote into a GGUF base: Hugging Face's GGUF parser (npm
// @huggingface/gguf) parses the base and the merged file, and this
// script, sharing no code with liblora, checks that
//   - every key/value of the base is in the merged file, in the same
//     order and with the same value; the only others are lora_merges and
//     lora_base, at the end;
//   - the tensors are the same names, shapes, ggml types and offsets, the
//     data section aligned to general.alignment;
//   - tensors the adapter does not change have the same bytes, and each
//     changed one is the base plus PEFT's s * B * A (read here from the
//     adapter's safetensors; llama's q/k rows in llama.cpp's interleaved
//     order, GGUF's ne reversed) within one unit in the last place of
//     the merged value's type.
//
// usage: node gguf-model-check.mjs MODULES_DIR BASE.gguf MERGED.gguf PEFT_DIR
// Exit 0 ok, 1 a check failed, 77 the package cannot be loaded.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modDir, baseFile, mergedFile, peftDir] = process.argv.slice(2);
let gguf;
try {
  const require = createRequire(path.join(path.resolve(modDir), "package.json"));
  ({ gguf } = require("@huggingface/gguf"));
} catch (e) {
  console.log(`SKIP: @huggingface/gguf not loadable from ${modDir}: ${e.message}`);
  process.exit(77);
}
let failures = 0;
const fail = (msg) => { console.error(`FAIL: ${mergedFile}: ${msg}`); failures++; };

const base = await gguf(path.resolve(baseFile), { allowLocalFile: true });
const merged = await gguf(path.resolve(mergedFile), { allowLocalFile: true });

// ---- key/values ----
const skip = new Set(["version", "tensor_count", "kv_count"]); // the parser's own fields
const bk = Object.keys(base.metadata).filter((k) => !skip.has(k) && k !== "lora_merges" && k !== "lora_base");
const mk = Object.keys(merged.metadata).filter((k) => !skip.has(k));
const same = (a, b) => JSON.stringify(a, (_, v) => (typeof v === "bigint" ? v.toString() : v)) ===
                       JSON.stringify(b, (_, v) => (typeof v === "bigint" ? v.toString() : v));
for (let i = 0; i < bk.length; i++) {
  if (mk[i] !== bk[i]) { fail(`key ${i}: ${mk[i]}, the base has ${bk[i]}`); break; }
  if (!same(merged.metadata[bk[i]], base.metadata[bk[i]])) fail(`key ${bk[i]}: value changed`);
}
for (const k of mk.slice(bk.length))
  if (k !== "lora_merges" && k !== "lora_base") fail(`key ${k} added`);
if (!("lora_merges" in merged.metadata)) fail("no lora_merges key");

// ---- tensors ----
const align = Number(merged.metadata["general.alignment"] ?? 32);
if (Number(merged.tensorDataOffset) % align) fail(`data section at ${merged.tensorDataOffset}, not aligned to ${align}`);
const bb = readFileSync(baseFile), mb = readFileSync(mergedFile);
const bt = new Map(base.tensorInfos.map((t) => [t.name, t]));
if (base.tensorInfos.length !== merged.tensorInfos.length) fail("tensor counts differ");

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
const bf = Buffer.alloc(4);
function get(buf, off, i, type) {
  if (type === 0) return buf.readFloatLE(off + 4 * i);
  if (type === 1) return halfToFloat(buf.readUInt16LE(off + 2 * i));
  if (type === 30) { bf.writeUInt16LE(0, 0); bf.writeUInt16LE(buf.readUInt16LE(off + 2 * i), 2); return bf.readFloatLE(0); }
  throw new Error(`type ${type}`);
}
const mantissa = { 0: 23, 1: 10, 30: 7 };
const ulp = (x, type) => 2 ** (Math.max(Math.floor(Math.log2(Math.abs(x) || 2 ** -126)), type === 1 ? -14 : -126) - mantissa[type]);

// ---- the adapter ----
const cfg = JSON.parse(readFileSync(path.join(peftDir, "adapter_config.json"), "utf8"));
const st = readFileSync(path.join(peftDir, "adapter_model.safetensors"));
const hlen = Number(st.readBigUInt64LE(0));
const header = JSON.parse(st.subarray(8, 8 + hlen).toString("utf8"));
const stType = { F32: 0, F16: 1, BF16: 30 };
const mods = new Map();
for (const [k, v] of Object.entries(header)) {
  const m = k.match(/^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)_proj\.(lora_A|lora_B)\.weight$/);
  if (!m) continue;
  const names = { q: "attn_q", k: "attn_k", v: "attn_v", o: "attn_output", gate: "ffn_gate", up: "ffn_up", down: "ffn_down" };
  const g = `blk.${m[1]}.${names[m[3]]}.weight`;
  const e = mods.get(g) ?? {};
  e[m[4]] = { shape: v.shape, off: 8 + hlen + v.data_offsets[0], type: stType[v.dtype] };
  mods.set(g, e);
}
const r = cfg.r, scale = cfg.use_rslora ? cfg.lora_alpha / Math.sqrt(r) : cfg.lora_alpha / r;
const heads = Number(base.metadata["llama.attention.head_count"]);
const kvHeads = Number(base.metadata["llama.attention.head_count_kv"] ?? heads);

let changed = 0;
for (const t of merged.tensorInfos) {
  const b = bt.get(t.name);
  if (!b) { fail(`${t.name} not in the base`); continue; }
  if (!same(t.shape, b.shape) || t.dtype !== b.dtype || t.offset !== b.offset) {
    fail(`${t.name}: shape, type or offset changed`); continue;
  }
  const mo = Number(merged.tensorDataOffset) + Number(t.offset), bo = Number(base.tensorDataOffset) + Number(b.offset);
  const next = merged.tensorInfos.map((x) => Number(x.offset)).filter((o) => o > Number(t.offset));
  const ad = mods.get(t.name);
  if (!ad) { // untouched: the same bytes, up to the next tensor (or the end)
    const end = next.length ? Math.min(...next) : mb.length - Number(merged.tensorDataOffset);
    const len = end - Number(t.offset);
    if (Buffer.compare(mb.subarray(mo, mo + len), bb.subarray(bo, bo + len)) !== 0) fail(`${t.name}: bytes changed`);
    continue;
  }
  changed++;
  const [cols, rows] = t.shape.map(Number); // ne[0] innermost
  const perm = /attn_q/.test(t.name) ? heads : /attn_k/.test(t.name) ? kvHeads : 0;
  const hd = perm ? rows / perm : 0;
  let worst = 0;
  for (let i = 0; i < rows; i++) {
    // GGUF row i holds Hugging Face row hf (llama.cpp's permute)
    let hf = i;
    if (perm) { const h = Math.floor(i / hd), w = i % hd; hf = h * hd + (w % 2) * (hd / 2) + Math.floor(w / 2); }
    for (let j = 0; j < cols; j++) {
      let d = 0;
      for (let k = 0; k < r; k++)
        d += get(st, ad.lora_B.off, hf * r + k, ad.lora_B.type) * get(st, ad.lora_A.off, k * cols + j, ad.lora_A.type);
      const want = get(bb, bo, i * cols + j, b.dtype) + scale * d;
      const got = get(mb, mo, i * cols + j, t.dtype);
      const e = Math.abs(got - want) / ulp(got, t.dtype);
      if (e > worst) worst = e;
    }
  }
  if (worst > 1) fail(`${t.name}: ${worst.toFixed(2)} ulp from base + s*B*A`);
}
if (changed !== mods.size) fail(`${changed} tensors changed, the adapter has ${mods.size} modules`);
console.log(`${merged.tensorInfos.length} tensors, ${changed} changed, ${mk.length} keys: ${failures ? "FAILED" : "ok"}`);
process.exit(failures ? 1 : 0);
