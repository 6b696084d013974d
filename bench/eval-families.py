#!/usr/bin/python3
# bench/eval-families.py - helper of bench/eval: a larger random model of
# one family of tests/fixtures/make-families.py (width 512, 6 layers,
# vocab 8192) as a Hugging Face folder, and PyTorch's forward time of the
# same model on the same sequences as lora-eval's data.jsonl.  Usage:
#   eval-families.py list                          the family names
#   eval-families.py make FAMILY OUTDIR            write OUTDIR/{model,data.jsonl}
#   eval-families.py time FAMILY OUTDIR THREADS    print tokens per second of torch
import importlib.util
import json
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "mf", os.path.join(here, "..", "tests", "fixtures", "make-families.py"))
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)

SEQ, NSEQ, VOCAB = 128, 16, 8192
BIG = dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=6,
           max_position_embeddings=256, vocab_size=VOCAB, intermediate_size=1408, ffn_dim=1408,
           head_dim=64)
FAMILIES = {name: (make, cfg) for name, make, cfg, _, _ in mf.FAMILIES}


def build(name):
    _, cfg = FAMILIES[name]
    cfg = dict(cfg, **{k: v for k, v in BIG.items() if k in cfg or k == "head_dim"})
    if cfg["model_type"] in ("opt", "phi", "gpt_neox"):
        cfg.pop("head_dim", None)
        cfg.pop("num_key_value_heads", None) if cfg["model_type"] != "phi" else None
    if cfg["model_type"] == "opt":
        cfg["word_embed_proj_dim"] = 512 if cfg["word_embed_proj_dim"] == 32 else 256
    if "sliding_window" in cfg and cfg["sliding_window"]:
        cfg["sliding_window"] = 64
    torch.manual_seed(3)
    cls = {"qwen3": mf.Decoder, "mistral": mf.Decoder, "opt": None, "phi": mf.Parallel,
           "gpt_neox": mf.Parallel, "gemma2": mf.Gemma, "gemma3_text": mf.Gemma}[cfg["model_type"]]
    if cls is None:
        prefix = "decoder." if name == "opt-random" else "model.decoder."
        return mf.OPT(cfg, prefix), cfg
    return cls(cfg), cfg


def seqs():
    g = torch.Generator().manual_seed(4)
    return torch.randint(0, VOCAB, (NSEQ, SEQ), generator=g)


def main():
    if sys.argv[1] == "list":
        print(" ".join(FAMILIES))
        return
    cmd, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
    model, cfg = build(name)
    for p in model.parameters():
        p.requires_grad_(False)
    if cmd == "make":
        d = os.path.join(out, "model")
        mf.mm.write_json(os.path.join(d, "config.json"), cfg)
        mf.mm.write_safetensors(os.path.join(d, "model.safetensors"), model.state())
        with open(os.path.join(out, "data.jsonl"), "w") as f:
            for s in seqs().tolist():
                f.write(json.dumps({"prompt": s[:-1], "choices": [[s[-1]]], "label": 0}) + "\n")
        return
    torch.set_num_threads(int(sys.argv[4]))
    ids = seqs()[:, :-1]
    with torch.no_grad():
        model(ids[:1])
        best = 1e30
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(NSEQ):
                model(ids[i:i + 1])
            best = min(best, time.perf_counter() - t0)
    print("%.1f" % (NSEQ * (SEQ - 1) / best))


if __name__ == "__main__":
    main()
