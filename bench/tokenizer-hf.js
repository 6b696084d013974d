// tokenizer-hf.js - Hugging Face tokenizers (npm "tokenizers", the Rust
// library) on the same text as bench/tokenizer_bench.c, same output line:
//   open_s encode_s bytes ids checksum
// node tokenizer-hf.js TOKENIZER.json TEXTFILE [REPS [whole|lines]]
// lines: encodeBatch over the lines (newlines excluded), one thread with
// TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1, as ours.
const fs = require('fs');
const { Tokenizer } = require('tokenizers');
const [tokPath, textPath, repsArg, mode] = process.argv.slice(2);
const reps = Number(repsArg || 3);
const text = fs.readFileSync(textPath, 'utf8');
const now = () => Number(process.hrtime.bigint()) / 1e9;
(async () => {
  let openS = Infinity, best = Infinity, ids = [];
  for (let r = 0; r < reps; r++) {
    const t0 = now();
    const tok = Tokenizer.fromFile(tokPath);
    const t1 = now();
    if (mode === 'lines') {
      let lines = text.split('\n');
      if (lines.length && lines[lines.length - 1] === '') lines.pop();
      const encs = await tok.encodeBatch(lines, { addSpecialTokens: false });
      ids = [];
      for (const e of encs) for (const id of e.getIds()) ids.push(id);
    } else {
      const enc = await tok.encode(text, null, { addSpecialTokens: false });
      ids = enc.getIds();
    }
    const t2 = now();
    openS = Math.min(openS, t1 - t0);
    best = Math.min(best, t2 - t1);
  }
  let h = 2166136261;
  for (const id of ids) h = Math.imul((h ^ id) >>> 0, 16777619) >>> 0;
  console.log(`${openS.toFixed(3)} ${best.toFixed(3)} ${Buffer.byteLength(text)} ${ids.length} ${h.toString(16).padStart(8, '0')}`);
})();
