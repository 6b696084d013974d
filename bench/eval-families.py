#!/usr/bin/python3
# bench/eval-families.py - helper of bench/eval: a larger random model of
# one family of tests/fixtures/make-families.py (width 512, 6 layers,
# vocab 8192) as a Hugging Face folder, and PyTorch's forward time of the
# same model on the same sequences as lora-eval's data.jsonl.  Usage:
#   eval-families.py list                          the family names
#   eval-families.py make FAMILY OUTDIR            write OUTDIR/{model,data.jsonl}
#   eval-families.py time FAMILY OUTDIR THREADS    print tokens per second of torch
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaltorch import VOCAB, fixture_module, print_forward_speed, write_choice_data  # noqa: E402

mf = fixture_module("mf", "make-families.py")
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
        write_choice_data(os.path.join(out, "data.jsonl"))
        return
    print_forward_speed(model, int(sys.argv[4]))


if __name__ == "__main__":
    main()
