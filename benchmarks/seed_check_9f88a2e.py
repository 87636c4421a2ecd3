"""Were seed 0 and seed 1's identical iteration-1 dev figures (33.3 / 73.5 / 17.6 / 8.8) a bug?

Round 2 of benchmarks/default_search.md ran the default at seed 0 and seed 1 with commit 9f88a2e's code
(the two-split arithmetic) and recorded the same four figures. This evaluates both seeds' M1 checkpoints
on both seeds' dev splits, question by question, with that commit's code:

    git worktree add /tmp/star-9f88a2e 9f88a2e
    (cd /tmp/star-9f88a2e && python -m star.cli hydra.run.dir=/tmp/s0 n_iterations=1 logger=none)          # seed 0
    (cd /tmp/star-9f88a2e && python -m star.cli hydra.run.dir=/tmp/s1 n_iterations=1 logger=none seed=1)   # seed 1
    PYTHONPATH=/tmp/star-9f88a2e python benchmarks/seed_check_9f88a2e.py /tmp/s0 /tmp/s1

The verdict and the output are in benchmarks/default_search.md ("Seed 0 and seed 1").
"""
import json
import sys
from collections import Counter

from star.generation.hf import HFGenerator     # 9f88a2e's modules (PYTHONPATH above)
from star.models import load_checkpoint
from star.tasks.arithmetic import ArithmeticTask

runs = {0: sys.argv[1], 1: sys.argv[2]}
devs = {s: ArithmeticTask([1, 2, 3], 160, 102, s).load("dev") for s in runs}
task = ArithmeticTask([1, 2, 3], 160, 102, 0)
out = {}
for ms, run in runs.items():
    model, tok = load_checkpoint(f"{run}/iter_01/checkpoint", dtype="float32", device="cpu")
    gen = HFGenerator(model, tok, batch_size=64, progress=False)
    for ds, dev in devs.items():
        # M1 is asked without the few-shot prefix, greedy, 48 new tokens: the eval stage's settings then.
        comps = gen.generate("", [task.format_question(e) for e in dev], seeds=[0] * len(dev), max_new_tokens=48,
                             stop=("\n\n",), temperature=0.0)
        ok = [task.is_correct(e, c) for e, c in zip(dev, comps)]
        per = Counter(e.meta["digits"] for e, k in zip(dev, ok) if k)
        out[(ms, ds)] = ok
        print(f"M1 of seed {ms} on dev of seed {ds}: {sum(ok)}/102 correct, per digit {dict(sorted(per.items()))}")
    print(f"  stored eval.json (seed {ms}):", json.load(open(f"{run}/iter_01/eval.json"))["n_correct"])
print(f"on seed 0's dev the two M1 agree on {sum(a == b for a, b in zip(out[(0, 0)], out[(1, 0)]))}/102 questions; "
      f"on seed 1's dev: {sum(a == b for a, b in zip(out[(0, 1)], out[(1, 1)]))}")
print("dev questions shared by the two seeds:", len({e.question for e in devs[0]} & {e.question for e in devs[1]}))
