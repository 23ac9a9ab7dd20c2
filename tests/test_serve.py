"""`smalltune serve`: a real uvicorn server on loopback, answering from a tiny Qwen3 engine."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest
import uvicorn
from typer.testing import CliRunner

from conftest import make_run_dir, write_jsonl
from smalltune.cli import app as cli
from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.formatting import encode_example, render_prompt
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.serving.app import ServeSettings, create_app
from smalltune.tasks import grammar
from smalltune.tasks.extract import ExtractTask
from smalltune.training.run import train

KEY_ENV, KEY = "SMALLTUNE_TEST_KEY", "secret-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
COMPLAINT = "我叫王芳，住在北京市朝阳区建国路88号，邮箱wangfang@example.com。快递三天都没到。"


@contextmanager
def running(app) -> Iterator[str]:
    """The app on a free loopback port in a background thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def with_infer(engine: Engine, **infer) -> Engine:
    """The same model and tokenizer under other infer settings (batch size, answer length)."""
    config = engine.config.model_copy(update={"infer": engine.config.infer.model_copy(update=infer)})
    return Engine(engine.model, engine.tokenizer, config)


def post_together(url: str, bodies: list[dict], headers: dict | None = None) -> list[httpx2.Response]:
    """POST all bodies at the same moment, one connection each."""
    start = threading.Barrier(len(bodies))

    def post(body: dict) -> httpx2.Response:
        start.wait()
        return httpx2.post(url, json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def chat(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {kind: make_run_dir(root / kind, tiny_qwen3_dir, kind) for kind in ("extract", "classify", "chat")}


@pytest.fixture(scope="module")
def chat_engine(runs) -> Engine:
    return Engine.from_run(runs["chat"])


def test_health_models_auth_body_limit_and_per_request_extract_errors(runs, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    engine = Engine.from_run(runs["extract"])
    app = create_app(engine, ServeSettings(api_key_env=KEY_ENV, max_body_bytes=4096))
    with running(app) as url:
        health = httpx2.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["kind"] == "extract"

        assert httpx2.get(f"{url}/v1/models").status_code == 401
        wrong = httpx2.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["error"]["message"]
        models = httpx2.get(f"{url}/v1/models", headers=AUTH).json()
        assert [m["id"] for m in models["data"]] == ["tiny-extract"]

        assert httpx2.post(f"{url}/v1/extract", json={"text": "长" * 5000}, headers=AUTH).status_code == 413
        invalid = httpx2.post(f"{url}/v1/extract", json={"txt": COMPLAINT}, headers=AUTH)
        assert invalid.status_code == 400 and "text" in invalid.json()["error"]["message"]
        wrong_kind = httpx2.post(f"{url}/v1/classify", json={"text": COMPLAINT}, headers=AUTH)
        assert wrong_kind.status_code == 404 and "/v1/extract" in wrong_kind.json()["error"]["message"]

        # the random model's answer, cut at 8 tokens, is no JSON object: each request says so, nothing crashes
        answers = post_together(f"{url}/v1/extract", [{"text": COMPLAINT, "id": f"r{i}"} for i in range(3)], AUTH)
        assert [a.status_code for a in answers] == [200, 200, 200]
        for i, answer in enumerate(a.json() for a in answers):
            assert answer["id"] == f"r{i}" and answer["result"] is None and answer["error"]
        assert httpx2.get(f"{url}/health").json()["requests_batched"] == 3


def test_a_typed_task_trains_answers_json_of_its_types_for_every_record_and_serves_it(tmp_path, tiny_qwen3_dir):
    """A list field and an optional one, trained 2 steps on the tiny model, then asked (constrained) for answers:
    by `generate` for every record, and through /v1/extract."""
    people, companies = ["李雷", "韩梅梅", "王芳", "赵娜"], ["阿里巴巴", "腾讯", "京东", "美团"]
    rows = [{"id": f"r{i}", "input": f"我叫{people[i % 4]}，投诉{companies[i % 4]}和{companies[(i + 1) % 4]}。"
             + ("邮箱 a@b.cn。" if i % 2 else ""),
             "output": {"name": people[i % 4], "email": "a@b.cn" if i % 2 else None,
                        "companies": [companies[i % 4], companies[(i + 1) % 4]]}} for i in range(8)]
    config = TaskConfig(
        name="typed", kind="extract",
        fields={"name": "姓名", "email": {"description": "邮箱", "optional": True}, "companies": {"type": "list"}},
        data={"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation_share": 0, "test_share": 0},
        model={"name": str(tiny_qwen3_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "report_to": "none"},
        infer={"batch_size": 4, "max_new_tokens": 96}, output_dir=tmp_path / "runs",
    )
    engine = Engine.from_run(train(config))
    records = [Record(r["id"], "t", r["input"], None) for r in rows]
    results = [engine.task.parse(text, record) for text, record in zip(engine.generate(records).texts, records)]
    assert all(result.ok for result in results), [result.error for result in results]
    with running(create_app(engine)) as url:
        served = httpx2.post(f"{url}/v1/extract", json={"text": rows[1]["input"]}, timeout=120).json()
    assert served["error"] is None
    for value, text in [*((r.value, record.input) for r, record in zip(results, records)), (served["result"], rows[1]["input"])]:
        assert list(value) == ["name", "email", "companies"], value
        assert isinstance(value["name"], str) and value["name"] in text
        assert value["email"] is None or value["email"] in text
        assert isinstance(value["companies"], list) and all(item and item in text for item in value["companies"])


def test_classify_answers_one_of_the_candidates_with_each_ones_probability(runs):
    engine = Engine.from_run(runs["classify"])
    with running(create_app(engine)) as url:
        question = {"text": "快递三天没到", "candidates": ["物流", "售后服务"]}
        reply = httpx2.post(f"{url}/v1/classify", json=question, timeout=60)
        assert reply.status_code == 200
        answer = reply.json()
        assert list(answer["scores"]) == ["物流", "售后服务"] and sum(answer["scores"].values()) == pytest.approx(1.0)
        assert answer["label"] == answer["answer"] == max(answer["scores"], key=answer["scores"].get)
        record = Record(id="q", where="q", input="快递三天没到", output=None, candidates=("物流", "售后服务"))
        assert answer["scores"] == pytest.approx(engine.generate([record]).probabilities[0])  # as predict answers it
        defaults = httpx2.post(f"{url}/v1/classify", json={"text": "谢谢你们的耐心"}, timeout=60).json()
        assert list(defaults["scores"]) == ["投诉", "咨询", "表扬"]  # the task's labels
        assert httpx2.post(f"{url}/v1/extract", json={"text": "x"}).status_code == 404


def test_classify_in_generate_mode_answers_without_scores(runs):
    engine = with_infer(Engine.from_run(runs["classify"]), classify="generate", max_new_tokens=16)
    with running(create_app(engine)) as url:
        answer = httpx2.post(f"{url}/v1/classify", json={"text": "快递三天没到"}, timeout=60).json()
        assert "scores" not in answer
        assert answer["label"] in ("投诉", "咨询", "表扬") or (answer["label"] is None and answer["error"])


def test_openai_client_gets_the_engines_answer_with_token_usage(chat_engine, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    messages = [{"role": "user", "content": "你好，我的快递丢了。"}]
    with_system = [{"role": "system", "content": "你是客服。"}, *messages]  # the task's system prompt is added
    tokenizer = chat_engine.tokenizer
    prompt = tokenizer(render_prompt(tokenizer, with_system, False), add_special_tokens=False)["input_ids"]
    expected = chat_engine.generate_ids([prompt]).texts[0]

    with running(create_app(chat_engine, ServeSettings(api_key_env=KEY_ENV))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        completion = client.chat.completions.create(model="tiny-chat", messages=messages)
        assert completion.choices[0].message.content == expected
        assert completion.choices[0].finish_reason in ("stop", "length")
        usage = completion.usage
        assert usage.prompt_tokens == len(prompt) and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        with pytest.raises(openai.BadRequestError, match="streaming"):
            client.chat.completions.create(model="tiny-chat", messages=messages, stream=True)
        with pytest.raises(openai.NotFoundError, match="tiny-chat"):
            client.chat.completions.create(model="gpt-4o", messages=messages)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


class PromptRecorder(Engine):
    """The transformers engine, keeping each prompt's token ids as the engine is handed them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts: list[list[int]] = []

    def _answer(self, prompts, grammars, on_batch):
        self.prompts += prompts
        return super()._answer(prompts, grammars, on_batch)


def test_a_served_chat_turn_gets_the_prompt_ids_training_used(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir, "chat", instruction="请用甄嬛的口吻回答。", system="你是甄嬛。")
    engine = PromptRecorder.from_run(run_dir)
    turns = [{"role": "user", "content": "娘娘，今天天气如何？"}, {"role": "assistant", "content": "回皇上，今日晴。"},
             {"role": "user", "content": "那我们去御花园走走？"}]
    system = {"role": "system", "content": "你是熹贵妃。"}
    with running(create_app(engine)) as url:
        for messages in (turns, [system, *turns]):  # the task's system prompt, then the request's own
            reply = httpx2.post(f"{url}/v1/chat/completions", json={"messages": messages}, timeout=60)
            assert reply.status_code == 200, reply.text
        bad = httpx2.post(f"{url}/v1/chat/completions", json={"messages": turns[:2]}, timeout=60)
        assert bad.status_code == 400 and "user" in bad.json()["error"]["message"]

    history = tuple(turns[:2])
    trained = [Record(id="t", where="train:1", input=turns[2]["content"], output="好。", history=history),
               Record(id="t", where="train:2", input=turns[2]["content"], output="好。", history=history,
                      system=system["content"])]
    for served, record in zip(engine.prompts, trained):
        example = encode_example(engine.tokenizer, engine.task, record, engine.config.model.max_length, False)
        prompt = [token for token, answer in zip(example.input_ids, example.completion_mask) if not answer]
        assert served == prompt
    text = engine.tokenizer.decode(engine.prompts[0])
    assert "请用甄嬛的口吻回答。" in text and "你是甄嬛。" in text and "回皇上，今日晴。" in text
    assert "你是熹贵妃。" in engine.tokenizer.decode(engine.prompts[1]) and "你是甄嬛。" not in engine.tokenizer.decode(engine.prompts[1])


def test_concurrent_requests_are_answered_in_shared_engine_calls(chat_engine):
    engine = with_infer(chat_engine, batch_size=8, max_new_tokens=8)
    with running(create_app(engine)) as url:
        replies = post_together(f"{url}/v1/chat/completions", [chat(f"第{i}个问题") for i in range(8)])
        assert all(r.status_code == 200 and r.json()["choices"][0]["message"]["content"] for r in replies)
        health = httpx2.get(f"{url}/health").json()
    assert health["requests_batched"] == 8
    assert health["largest_batch"] >= 2 and health["engine_calls"] < 8


def test_a_full_queue_answers_429_at_once_and_the_server_keeps_serving(chat_engine):
    engine = with_infer(chat_engine, batch_size=1, max_new_tokens=48)  # each engine call takes a while
    with running(create_app(engine, ServeSettings(max_queue=1))) as url:
        replies = post_together(f"{url}/v1/chat/completions", [chat(f"问题{i}") for i in range(6)])
        statuses = sorted(r.status_code for r in replies)
        assert set(statuses) == {200, 429} and statuses.count(200) <= 3, statuses
        busy = next(r for r in replies if r.status_code == 429)
        assert "busy" in busy.json()["error"]["message"] and busy.headers["Retry-After"] == "1"
        assert busy.elapsed < max(r.elapsed for r in replies if r.status_code == 200)  # refused, not made to wait
        assert httpx2.post(f"{url}/v1/chat/completions", json=chat("再来"), timeout=60).status_code == 200


def test_a_request_whose_client_left_is_skipped_not_computed(chat_engine):
    engine = with_infer(chat_engine, batch_size=1, max_new_tokens=128)  # each engine call takes a while
    with running(create_app(engine)) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx2.post, f"{url}/v1/chat/completions", json=chat("第一"), timeout=120)
            while httpx2.get(f"{url}/health").json()["requests_batched"] < 1:
                time.sleep(0.02)
            with pytest.raises(httpx2.ReadTimeout):  # this client gives up while its request waits
                httpx2.post(f"{url}/v1/chat/completions", json=chat("第二"), timeout=0.3)
            assert first.result().status_code == 200
        deadline = time.time() + 30
        while (health := httpx2.get(f"{url}/health").json())["abandoned"] < 1 and time.time() < deadline:
            time.sleep(0.05)
    assert health["abandoned"] == 1 and health["engine_calls"] == 1


@contextmanager
def serve_process(run_dir: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`smalltune serve run_dir` in a process of its own on a free loopback port, once it answers /health: its base
    URL and the process (killed at the end if still running)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "smalltune.cli", "serve", str(run_dir), "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"the server did not start:\n{server.stdout.read() if server.poll() is not None else ''}")
            try:
                httpx2.get(f"{url}/health")
                break
            except httpx2.TransportError:
                time.sleep(0.3)
        yield url, server
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_sigterm_lets_accepted_requests_finish_before_the_process_exits(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir, "chat", infer={"batch_size": 1, "max_new_tokens": 48})
    with serve_process(run_dir) as (url, server), ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(httpx2.post, f"{url}/v1/chat/completions", json=chat(f"问题{i}"), timeout=120)
                   for i in range(2)]
        while True:  # wait until both are accepted: one in the engine, one queued
            health = httpx2.get(f"{url}/health").json()
            if health["requests_batched"] + health["queued"] == 2:
                break
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        replies = [p.result() for p in pending]
        assert [r.status_code for r in replies] == [200, 200]
        assert all(r.json()["choices"][0]["message"]["content"] for r in replies)
        assert server.wait(60) in (0, -signal.SIGTERM)


def test_a_200000_character_request_is_answered_in_seconds_and_other_clients_meanwhile(runs):
    engine = Engine.from_run(runs["extract"])
    huge = {"text": (COMPLAINT * 4000)[:200_000], "id": "huge"}
    with running(create_app(engine)) as url, ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        pending = pool.submit(httpx2.post, f"{url}/v1/extract", json=huge, timeout=60)
        while httpx2.get(f"{url}/health").json()["requests_batched"] < 1 and not pending.done():
            time.sleep(0.01)
        health = [httpx2.get(f"{url}/health", timeout=5).elapsed.total_seconds() for _ in range(5)]
        other = httpx2.post(f"{url}/v1/extract", json={"text": COMPLAINT, "id": "other"}, timeout=60)
        reply = pending.result()
        took = time.perf_counter() - started
    assert reply.status_code == 200 and reply.json()["input_shortened"] is True, reply.text
    print(f"\n200,000 characters answered in {took:.1f} s; /health meanwhile in {max(health):.3f} s at most")
    assert took < 30, f"the 200,000-character request took {took:.1f} s"
    assert other.status_code == 200 and max(health) < 1, health


def test_an_input_too_long_to_ground_is_answered_400_and_its_batch_neighbour_200(runs, monkeypatch):
    monkeypatch.setattr(grammar, "MAX_GROUNDED_CHARS", 60)  # a cap the test's inputs can cross
    engine = Engine.from_run(runs["extract"])
    with running(create_app(engine)) as url:
        short, long = post_together(f"{url}/v1/extract", [{"text": "我叫王芳。"}, {"text": COMPLAINT * 2}])
    assert (short.status_code, long.status_code) == (200, 400)
    assert "more than the 60" in long.json()["error"]["message"]
    assert "infer.grounded: false" in long.json()["error"]["message"]


def test_the_bearer_scheme_is_read_in_any_case(chat_engine, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    headers = [f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}", f"Basic {KEY}", KEY, f"Bearer {KEY}x", "Bearer"]
    with running(create_app(chat_engine, ServeSettings(api_key_env=KEY_ENV))) as url:
        codes = [httpx2.get(f"{url}/v1/models", headers={"Authorization": h}).status_code for h in headers]
    assert codes == [200, 200, 200, 401, 401, 401, 401]


class FailingEngine(Engine):
    """The transformers engine failing inside, with internals in the exception's text."""

    def _answer(self, prompts, grammars, on_batch):
        raise RuntimeError("CUDA error at /home/alice/models, token=sk-live-123")


class FailingParse(ExtractTask):
    def parse(self, text, record):
        raise KeyError("/srv/secret/config.yaml")


def _logged(caplog, request_id: str) -> str:
    """What the server logged under the request id: the message and the exception."""
    entry = next(r for r in caplog.records if request_id in r.getMessage())
    return f"{entry.getMessage()} {entry.exc_info[1]!r}"


def test_a_failure_inside_the_server_is_a_500_with_a_request_id_and_its_details_only_in_the_log(runs, caplog):
    chat_engine = FailingEngine.from_run(runs["chat"])
    extract_engine = Engine.from_run(runs["extract"])
    extract_engine.task = FailingParse(extract_engine.config)
    with caplog.at_level(logging.ERROR, logger="smalltune.serving.app"):
        with running(create_app(chat_engine)) as url:
            engine_failed = httpx2.post(f"{url}/v1/chat/completions", json=chat("你好"), timeout=60)
        with running(create_app(extract_engine)) as url:
            parse_failed = httpx2.post(f"{url}/v1/extract", json={"text": COMPLAINT}, timeout=60)
    for reply, secret in ((engine_failed, "sk-live-123"), (parse_failed, "/srv/secret")):
        assert reply.status_code == 500 and secret not in reply.text and "alice" not in reply.text
        error = reply.json()["error"]
        request_id = reply.headers["X-Request-Id"]
        assert error["type"] == "server_error" and request_id in error["message"]
        assert secret in _logged(caplog, request_id)


def test_serve_refuses_a_port_out_of_range_before_loading_the_model(tmp_path):
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-run"), "--port", "99999"])
    assert result.exit_code == 2 and "--port" in result.output and "65535" in result.output
    assert time.perf_counter() - started < 5


def test_extract_answers_a_page_sent_as_html_as_it_answers_its_visible_text(runs):
    from smalltune.data.html import page_text

    page = ("<html><head><meta charset='utf-8'><script>var ad = '广告';</script></head><body><div>首页</div>"
            f"<p>{COMPLAINT}</p></body></html>")
    with running(create_app(Engine.from_run(runs["extract"]))) as url:
        as_html = httpx2.post(f"{url}/v1/extract", json={"html": page, "id": "p"})
        as_text = httpx2.post(f"{url}/v1/extract", json={"text": page_text(page), "id": "p"})
        raw = httpx2.post(f"{url}/v1/extract", json={"text": page, "id": "p"})
        assert as_html.status_code == as_text.status_code == raw.status_code == 200
        assert as_html.json() == as_text.json() != raw.json()  # the visible text, not the markup, was answered
        for body, says in (({"text": COMPLAINT, "html": page}, "has both"), ({"id": "x"}, "has neither"),
                           ({"html": "<script>x()</script>"}, "no visible text")):
            refused = httpx2.post(f"{url}/v1/extract", json=body)
            assert refused.status_code == 400 and says in refused.json()["error"]["message"]
