# bench/evaltorch.py - what bench/eval-torch.py and bench/eval-families.py
# share: the fixture generators loaded as modules, the random sequences
# both lora-eval and PyTorch run on, the data set written from them, and
# PyTorch's forward timed on them (best of three, tokens per second).
import importlib.util
import json
import os
import time

import torch

SEQ, NSEQ, VOCAB = 128, 16, 8192
HERE = os.path.dirname(os.path.abspath(__file__))


def fixture_module(name, filename):
    """tests/fixtures/FILENAME (a script, not a package) as module NAME."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(HERE, "..", "tests", "fixtures", filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seqs():
    g = torch.Generator().manual_seed(4)
    return torch.randint(0, VOCAB, (NSEQ, SEQ), generator=g)


def write_choice_data(path):
    """One-token choices after a SEQ-1 prompt: the forward runs the prompt in one pass."""
    with open(path, "w") as f:
        for s in seqs().tolist():
            f.write(json.dumps({"prompt": s[:-1], "choices": [[s[-1]]], "label": 0}) + "\n")


def print_forward_speed(model, threads):
    torch.set_num_threads(threads)
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
