#!/usr/bin/python3
# bench/eval-torch.py - helper of bench/eval: makes a larger random GPT-2
# or LLaMA model (HF folder) and a random r=8 adapter with the fixture
# generator's code, and times PyTorch's forward of the same model on the
# same sequences.  Usage:
#   eval-torch.py make ARCH OUTDIR        write OUTDIR/{model,adapter,data.jsonl}
#   eval-torch.py time ARCH OUTDIR THREADS  print tokens per second of torch
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaltorch import VOCAB, fixture_module, print_forward_speed, seqs, write_choice_data  # noqa: E402

mm = fixture_module("mm", "make-models.py")
GPT2 = dict(mm.GPT2_CFG, n_embd=512, n_head=8, n_layer=6, n_positions=256, n_ctx=256,
            vocab_size=VOCAB)
LLAMA = dict(mm.LLAMA_CFG, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
             num_key_value_heads=4, num_hidden_layers=6, max_position_embeddings=256,
             vocab_size=VOCAB)


def build(arch):
    torch.manual_seed(3)
    return mm.GPT2(GPT2) if arch == "gpt2" else mm.Llama(LLAMA)


def main():
    cmd, arch, out = sys.argv[1], sys.argv[2], sys.argv[3]
    model = build(arch)
    if cmd == "make":
        mm.OUT = out
        cfg = GPT2 if arch == "gpt2" else LLAMA
        d = os.path.join(out, "model")
        mm.write_json(os.path.join(d, "config.json"), cfg)
        mm.write_safetensors(os.path.join(d, "model.safetensors"), model.state())
        gen = torch.Generator().manual_seed(5)
        wset = "cattn-cproj" if arch == "gpt2" else "qkvo"
        loras = mm.attach(model, wset, 8, 16, gen)
        with torch.no_grad():
            for l in loras.values():
                l.B.normal_(0, 0.02, generator=gen)
        mm.write_adapter(os.path.join(out, "adapter"), arch, loras, 8, 16, wset, "bench")
        write_choice_data(os.path.join(out, "data.jsonl"))
        # generation: 8-token prompts, 64 greedy tokens each (one token per forward)
        with open(os.path.join(out, "gen.jsonl"), "w") as f:
            for s in seqs().tolist()[:8]:
                f.write(json.dumps({"prompt": s[:8], "target": s[8:72]}) + "\n")
        return
    print_forward_speed(model, int(sys.argv[4]))


if __name__ == "__main__":
    main()
