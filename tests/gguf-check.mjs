// tests/gguf-check.mjs - an independent reading of what lora-convert
// writes: Hugging Face's GGUF parser (npm @huggingface/gguf) parses the
// file, and this script, sharing no code with liblora, reads the PEFT
// adapter it came from (adapter_config.json, adapter_model.safetensors)
// and checks, module by module, that llama.cpp's update
//   (alpha / r) * lora_b * lora_a      (alpha 0: scale 1)
// equals PEFT's  s * B * A  with s = alpha_m / r_m (or / sqrt(r_m) with
// use_rslora, r_m and alpha_m after rank_pattern / alpha_pattern), rows
// of llama's q/k put back in HF order, within TOL of the largest |dW|.
//
// usage: node gguf-check.mjs MODULES_DIR FILE.gguf PEFT_DIR TOL
// MODULES_DIR holds node_modules/@huggingface/gguf.  Exit 0 ok, 1 a
// check failed, 77 the package cannot be loaded.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modDir, file, peftDir, tolArg] = process.argv.slice(2);
const tol = Number(tolArg);
let gguf;
try {
  const require = createRequire(path.join(path.resolve(modDir), "package.json"));
  ({ gguf } = require("@huggingface/gguf"));
} catch (e) {
  console.log(`SKIP: @huggingface/gguf not loadable from ${modDir}: ${e.message}`);
  process.exit(77);
}

let failures = 0;
const fail = (msg) => { console.error(`FAIL: ${file}: ${msg}`); failures++; };

// ---- the GGUF through Hugging Face's parser ----
const parsed = await gguf(path.resolve(file), { allowLocalFile: true });
const meta = parsed.metadata;
if (meta["general.type"] !== "adapter") fail(`general.type is ${meta["general.type"]}`);
if (meta["adapter.type"] !== "lora") fail(`adapter.type is ${meta["adapter.type"]}`);
const arch = meta["general.architecture"];
const alpha = Number(meta["adapter.lora.alpha"] ?? 0);
const align = Number(meta["general.alignment"] ?? 32);
const bytes = readFileSync(file);
const dataOff = Number(parsed.tensorDataOffset);
if (dataOff % align) fail(`tensor data at ${dataOff}, not aligned to ${align}`);

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
function decode(buf, off, n, type) {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (type === "F32" || type === 0) out[i] = buf.readFloatLE(off + 4 * i);
    else if (type === "F16" || type === 1) out[i] = halfToFloat(buf.readUInt16LE(off + 2 * i));
    else if (type === "BF16" || type === 30) {
      const b = Buffer.alloc(4);
      b.writeUInt16LE(buf.readUInt16LE(off + 2 * i), 2);
      out[i] = b.readFloatLE(0);
    } else throw new Error(`dtype ${type}`);
  }
  return out;
}

const tensors = new Map();
for (const t of parsed.tensorInfos) {
  const ne = t.shape.map(Number);
  const n = ne.reduce((a, b) => a * b, 1);
  const off = dataOff + Number(t.offset);
  if (Number(t.offset) % align) fail(`${t.name}: offset ${t.offset} not aligned`);
  tensors.set(t.name, { ne, data: decode(bytes, off, n, t.dtype) });
}

// ---- the PEFT adapter, read here from scratch ----
const cfg = JSON.parse(readFileSync(path.join(peftDir, "adapter_config.json"), "utf8"));
const st = readFileSync(path.join(peftDir, "adapter_model.safetensors"));
const hlen = Number(st.readBigUInt64LE(0));
const header = JSON.parse(st.subarray(8, 8 + hlen).toString("utf8"));
const peft = new Map();
for (const [k, v] of Object.entries(header)) {
  if (k === "__metadata__") continue;
  const m = k.match(/^base_model\.model\.(.+)\.(lora_A|lora_B)\.weight$/) ||
            k.match(/^base_model\.model\.(.+)\.(lora_embedding_A|lora_embedding_B)$/);
  if (!m) continue;
  const n = v.shape.reduce((a, b) => a * b, 1);
  const e = peft.get(m[1]) ?? {};
  e[m[2].endsWith("A") ? "A" : "B"] = { shape: v.shape, data: decode(st, 8 + hlen + v.data_offsets[0], n, v.dtype) };
  e.emb = m[2].startsWith("lora_embedding");
  peft.set(m[1], e);
}
// PEFT's pattern rule: the key matches the module name, or its end after a '.'
const patternValue = (pat, name, dflt) => {
  for (const [k, v] of Object.entries(pat ?? {}))
    if (name === k || name.endsWith("." + k) || new RegExp(`(.*\\.)?${k}$`).test(name)) return v;
  return dflt;
};

// HF name -> GGUF name, as llama.cpp's tensor_mapping.py has it
function ggufName(name) {
  let m = name.replace(/^model\.language_model\./, "model.").replace(/^language_model\./, "");
  m = m.replace(/^(model|transformer)\./, "");
  const table = arch === "gpt2"
    ? [[/^wte$/, "token_embd"], [/^lm_head$/, "output"], [/^h\.(\d+)\.attn\.c_attn$/, "blk.$1.attn_qkv"],
       [/^h\.(\d+)\.attn\.c_proj$/, "blk.$1.attn_output"], [/^h\.(\d+)\.mlp\.c_fc$/, "blk.$1.ffn_up"],
       [/^h\.(\d+)\.mlp\.c_proj$/, "blk.$1.ffn_down"]]
    : [[/^embed_tokens$/, "token_embd"], [/^lm_head$/, "output"],
       [/^layers\.(\d+)\.self_attn\.q_proj$/, "blk.$1.attn_q"], [/^layers\.(\d+)\.self_attn\.k_proj$/, "blk.$1.attn_k"],
       [/^layers\.(\d+)\.self_attn\.v_proj$/, "blk.$1.attn_v"], [/^layers\.(\d+)\.self_attn\.o_proj$/, "blk.$1.attn_output"],
       [/^layers\.(\d+)\.self_attn\.qkv_proj$/, "blk.$1.attn_qkv"],
       [/^layers\.(\d+)\.mlp\.gate_proj$/, "blk.$1.ffn_gate"], [/^layers\.(\d+)\.mlp\.up_proj$/, "blk.$1.ffn_up"],
       [/^layers\.(\d+)\.mlp\.gate_up_proj$/, "blk.$1.ffn_up"], [/^layers\.(\d+)\.mlp\.down_proj$/, "blk.$1.ffn_down"]];
  for (const [re, to] of table) if (re.test(m)) return m.replace(re, to) + ".weight";
  return null;
}

let checked = 0, worst = 0;
for (const [name, e] of peft) {
  const g = ggufName(name);
  const a = tensors.get(g + ".lora_a"), b = tensors.get(g + ".lora_b");
  if (!a || !b) { fail(`${name}: no ${g}.lora_a/.lora_b`); continue; }
  const r = e.A.shape[0];
  const rm = patternValue(cfg.rank_pattern, name, cfg.r);
  const am = patternValue(cfg.alpha_pattern, name, cfg.lora_alpha);
  const s = cfg.use_rslora ? am / Math.sqrt(rm) : am / rm;
  const rb = b.ne[0];
  if (rb !== r) { fail(`${name}: rank ${rb} in GGUF, ${r} in PEFT`); continue; }
  const sl = alpha ? Math.fround(Math.fround(alpha) / rb) : 1;
  const out = e.B.shape[0], inn = e.A.shape[1];
  // llama's q/k rows: GGUF row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j
  let heads = 0;
  if (arch === "llama" && /\.q_proj$/.test(name)) heads = Number(meta["llama.attention.head_count"]);
  if (arch === "llama" && /\.k_proj$/.test(name)) heads = Number(meta["llama.attention.head_count_kv"]);
  const hd = heads ? out / heads : 0;
  let num = 0, den = 0;
  for (let i = 0; i < out; i++) {
    let row = i;
    if (heads) { const h = Math.floor(i / hd), t = Math.floor((i % hd) / (hd / 2)), j = i % (hd / 2); row = h * hd + 2 * j + t; }
    for (let j = 0; j < inn; j++) {
      let x = 0, y = 0;
      for (let k = 0; k < r; k++) {
        x += e.B.data[i * r + k] * e.A.data[k * inn + j];
        const av = e.emb ? a.data[j * r + k] : a.data[k * inn + j];
        y += b.data[row * r + k] * av;
      }
      x *= s; y *= sl;
      num = Math.max(num, Math.abs(x - y));
      den = Math.max(den, Math.abs(x));
    }
  }
  const rel = den ? num / den : num;
  worst = Math.max(worst, rel);
  if (!(rel <= tol)) fail(`${name}: llama.cpp's delta differs from PEFT's by ${rel.toExponential(3)} (tolerance ${tol})`);
  checked++;
}
if (checked === 0) fail("no module checked");
console.log(`${path.basename(file)}: ${checked} modules, ${parsed.tensorInfos.length} tensors, arch ${arch}, alpha ${alpha}, largest relative difference ${worst.toExponential(2)}: ${failures ? "FAILED" : "ok"}`);
process.exit(failures ? 1 : 0);
