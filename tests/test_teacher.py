"""The teacher client against a real HTTP teacher on 127.0.0.1 whose responses are no chat completion."""

from __future__ import annotations

import asyncio
import json

import pytest
from teacher_server import Script, TeacherServer

from smalltune.config import TaskConfig, TeacherConfig
from smalltune.labelling.teacher import Refused, Tally, Teacher, TeacherError
from smalltune.tasks import build_task

TEXT = "我叫王芳，邮箱wangfang@example.com。快递三天都没到。"
ANSWER = json.dumps({"name": "王芳", "email": "wangfang@example.com"}, ensure_ascii=False)
OTHER = "我叫李雷。"
BROKEN = ("html", "truncated", "no_choices")


def ask(url: str, texts: list[str], max_retries: int = 3) -> tuple[list[str | Exception], Tally]:
    """Ask the teacher at `url` about each text in turn: each answer, or the exception it raised."""
    task = build_task(TaskConfig(name="t", kind="extract", fields={"name": "姓名", "email": "邮箱"},
                                 data={"train": "x.jsonl"}))
    settings = TeacherConfig(base_url=url, model="teacher-test", api_key_env=None, timeout=5,
                             max_retries=max_retries, backoff=0.01, max_backoff=0.02)
    tally = Tally()

    async def run() -> list[str | Exception]:
        teacher, results = Teacher(settings, task, tally), []
        async with teacher.client:
            for text in texts:
                try:
                    results.append(await teacher.ask([{"role": "user", "content": f"抽取。\n\n{text}"}]))
                except (Refused, TeacherError) as exc:
                    results.append(exc)
        return results

    return asyncio.run(run()), tally


def test_html_truncated_json_and_missing_choices_are_retried_until_a_real_answer():
    with TeacherServer(Script({TEXT: ANSWER}, {TEXT: list(BROKEN)})) as teacher:
        [answer], tally = ask(teacher.url, [TEXT])
        assert [entry.behaviour for entry in teacher.log] == [*BROKEN, "ok"]
    assert answer == ANSWER
    assert tally.retries["bad response"] == 3 and tally.requests == 4


@pytest.mark.parametrize("behaviour, says", [("html", "502 Bad Gateway"), ("truncated", "JSON cut off"),
                                             ("no_choices", "without 'choices'")])
def test_a_teacher_that_never_answers_a_completion_is_reported_with_what_it_sent(behaviour, says):
    with TeacherServer(Script({TEXT: ANSWER}, {TEXT: [behaviour] * 3})) as teacher:
        [error], _ = ask(teacher.url, [TEXT], max_retries=2)
    assert isinstance(error, TeacherError)
    assert "after 3 tries" in str(error) and says in str(error) and "teacher.base_url" in str(error)


def test_a_record_the_teacher_keeps_answering_badly_is_rejected_with_the_reason():
    with TeacherServer(Script({OTHER: ANSWER, TEXT: ANSWER}, {TEXT: ["html"] * 3})) as teacher:
        (fine, rejected), _ = ask(teacher.url, [OTHER, TEXT], max_retries=2)
    assert fine == ANSWER
    assert isinstance(rejected, Refused) and "no chat completion" in str(rejected) and "<html>" in str(rejected)
