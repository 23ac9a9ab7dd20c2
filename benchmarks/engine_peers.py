"""The peer engines of `benchmarks/engines.py`, each run in its own process and environment.

Standalone (it imports neither torch nor smalltune): run by the driver as
    PYTHON benchmarks/engine_peers.py ENGINE JOB.json RESULT.json
where JOB holds the exported model file, the prompts' token ids (smalltune's, the model's chat template), each
prompt's answer grammar (smalltune's grounded EBNF) or the task's JSON Schema, the stop token, the answer budget and
the thread count; RESULT gets the answer texts, the new-token count, the load and answer seconds.

- `llama.cpp`: llama-cpp-python, one prompt at a time (its Python API decodes one sequence); greedy; the grammar
  as GBNF where llama.cpp parses it, else the JSON Schema; llama.cpp reuses the previous prompt's KV cache for a
  shared opening by itself.
- `openvino`: OpenVINO GenAI's continuous-batching pipeline reading the GGUF file, prefix caching on, all prompts
  submitted at once; greedy; the grammar through its XGrammar-based structured output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def run_llama_cpp(job: dict) -> dict:
    """Answers from llama.cpp, one prompt after another."""
    from llama_cpp import Llama, LlamaGrammar

    started = time.perf_counter()
    llm = Llama(model_path=job["model"], n_ctx=job["context"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_batch=512, verbose=False)
    loaded = time.perf_counter() - started
    grammars, constraint = llama_grammars(job, LlamaGrammar)
    texts, new_tokens = [], 0
    started = time.perf_counter()
    for ids, grammar in zip(job["prompts"], grammars):
        out = llm.create_completion(prompt=ids, max_tokens=job["max_new_tokens"], temperature=0.0, top_k=1,
                                    repeat_penalty=1.0, grammar=grammar)
        texts.append(out["choices"][0]["text"])
        new_tokens += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - started
    decode = llama_decode_rate(llm, job["prompts"][0], job["decode_probe_tokens"])
    llm.close()
    return {"texts": texts, "new_tokens": new_tokens, "load_s": loaded, "seconds": seconds, "constraint": constraint,
            "prompt_tokens": sum(len(ids) for ids in job["prompts"]), "decode_tokens_s": {"1": decode}}


def llama_decode_rate(llm, prompt: list[int], tokens: int) -> float:
    """Tokens/s of llama.cpp's decode steps alone, one token a step after the prompt, best of two."""
    best = float("inf")
    for _ in range(2):
        llm.reset()
        llm.eval(prompt)
        started = time.perf_counter()
        for _ in range(tokens):
            llm.eval(prompt[-1:])
        best = min(best, time.perf_counter() - started)
    return tokens / best


def llama_grammars(job: dict, grammar_class) -> tuple[list, str]:
    """Each prompt's grammar for llama.cpp: smalltune's EBNF where llama.cpp parses it, else the JSON Schema."""
    if job.get("grammars"):
        try:
            return [grammar_class.from_string(g, verbose=False) for g in job["grammars"]], "grounded grammar"
        except (ValueError, RuntimeError) as exc:
            print(f"llama.cpp does not parse the grounded grammar ({exc}); using the JSON Schema", file=sys.stderr)
    if job.get("schema"):
        schema = grammar_class.from_json_schema(json.dumps(job["schema"]), verbose=False)
        return [schema] * len(job["prompts"]), "JSON Schema"
    return [None] * len(job["prompts"]), "none"


def run_openvino(job: dict) -> dict:
    """Answers from OpenVINO GenAI's continuous-batching pipeline, every prompt submitted at once."""
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    scheduler = og.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.max_num_seqs = job["batch_size"]
    scheduler.cache_size = 2  # GiB of KV cache
    started = time.perf_counter()
    pipe = og.ContinuousBatchingPipeline(job["model"], scheduler, "CPU", {"INFERENCE_NUM_THREADS": job["threads"]})
    loaded = time.perf_counter() - started
    configs, constraint = [], "none"
    for i in range(len(job["prompts"])):
        config = og.GenerationConfig(max_new_tokens=job["max_new_tokens"], do_sample=False, repetition_penalty=1.0)
        config.stop_token_ids = {job["stop_id"]}
        if job.get("grammars"):
            config.structured_output_config = og.StructuredOutputConfig(grammar=job["grammars"][i])
            constraint = "grounded grammar"
        elif job.get("schema"):
            config.structured_output_config = og.StructuredOutputConfig(json_schema=json.dumps(job["schema"]))
            constraint = "JSON Schema"
        configs.append(config)
    inputs = [ov.Tensor(np.array([ids], dtype=np.int64)) for ids in job["prompts"]]
    started = time.perf_counter()
    results = pipe.generate(inputs, configs)
    seconds = time.perf_counter() - started
    tokenizer = pipe.get_tokenizer()
    answers = [[token for token in result.m_generation_ids[0] if token != job["stop_id"]] for result in results]
    decode = {str(b): openvino_decode_rate(pipe, inputs[0], b, job["decode_probe_tokens"], og)
              for b in sorted({1, job["batch_size"]})}
    return {"texts": [tokenizer.decode(ids, skip_special_tokens=True) for ids in answers],
            "new_tokens": sum(len(ids) for ids in answers), "load_s": loaded, "seconds": seconds,
            "constraint": constraint, "prompt_tokens": sum(len(ids) for ids in job["prompts"]), "decode_tokens_s": decode}


def openvino_decode_rate(pipe, prompt, batch: int, tokens: int, og) -> float:
    """Generated tokens/s of the pipeline in decode alone: `batch` copies of a prompt answered with 1+N tokens
    against 1 token (end of turn ignored), best of two each; the prompt's KV comes from the prefix cache."""
    def seconds(new: int) -> float:
        config = og.GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, ignore_eos=True)
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            pipe.generate([prompt] * batch, [config] * batch)
            best = min(best, time.perf_counter() - started)
        return best

    return batch * tokens / (seconds(1 + tokens) - seconds(1))


ENGINES = {"llama.cpp": run_llama_cpp, "openvino": run_openvino}


def main() -> None:
    engine, job_path, result_path = sys.argv[1:4]
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    result = ENGINES[engine](job)
    Path(result_path).write_text(json.dumps({**result, "peak_rss_gib": peak_rss_gib()}, ensure_ascii=False),
                                 encoding="utf-8")


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB: the kernel's high-water mark of its address space (VmHWM; unlike
    getrusage's maximum, it does not count the memory of the process that started this one before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    main()
