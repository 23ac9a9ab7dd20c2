"""Chat-template rendering, answer-only labels and answer-preserving truncation, on the real Qwen tokenizer."""

from __future__ import annotations

import pytest

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.formatting import encode_example, encode_examples, end_of_turn, prompt_ids, render_prompt
from smalltune.tasks import build_task

FIELDS = {"name": "姓名", "address": "地址", "email": "邮箱", "question": "问题"}
GOLD = {"name": "张伟", "address": "北京市朝阳区建国路8号", "email": "zw@163.com", "question": "宽带经常断网"}


def extract_task(**model):
    config = TaskConfig(name="t", kind="extract", fields=FIELDS, data={"train": "x.jsonl"}, model=model)
    return build_task(config)


def record(text: str = "我叫张伟，住在北京市朝阳区建国路8号，邮箱zw@163.com。宽带经常断网。") -> Record:
    return Record(id="r1", where="x.jsonl:1", input=text, output=dict(GOLD))


@pytest.mark.parametrize("tok", ["qwen_tokenizer", "qwen3_tokenizer"])
def test_labels_cover_exactly_the_answer_and_end_of_turn(tok, request):
    tokenizer = request.getfixturevalue(tok)
    task = extract_task()
    example = encode_example(tokenizer, task, record(), 512, enable_thinking=False)
    labelled = [t for t, m in zip(example.input_ids, example.completion_mask) if m]
    assert tokenizer.decode(labelled) == task.answer(record()) + "<|im_end|>"
    assert labelled[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example.completion_mask[-1] == 1 and example.completion_mask[0] == 0
    # everything before the answer is prompt: it carries no label
    first = example.completion_mask.index(1)
    assert all(m == 0 for m in example.completion_mask[:first]) and all(example.completion_mask[first:])


@pytest.mark.parametrize("tok", ["qwen_tokenizer", "qwen3_tokenizer"])
def test_training_text_is_what_the_template_renders_for_the_whole_conversation(tok, request):
    tokenizer = request.getfixturevalue(tok)
    task = extract_task()
    example = encode_example(tokenizer, task, record(), 512, enable_thinking=False)
    conversation = task.messages(record()) + [{"role": "assistant", "content": task.answer(record())}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False, enable_thinking=False)
    assert tokenizer.decode(example.input_ids) == full.rstrip()


def test_qwen3_thinking_is_off_the_same_way_in_training_and_inference(qwen3_tokenizer):
    task = extract_task()
    example = encode_example(qwen3_tokenizer, task, record(), 512, enable_thinking=False)
    inference, _ = prompt_ids(qwen3_tokenizer, task, record(), 512, enable_thinking=False)
    prompt_len = example.completion_mask.index(1)
    assert example.input_ids[:prompt_len] == inference
    assert qwen3_tokenizer.decode(inference).endswith("<think>\n\n</think>\n\n")
    thinking, _ = prompt_ids(qwen3_tokenizer, task, record(), 512, enable_thinking=True)
    assert thinking != inference


def test_end_of_turn_is_read_off_the_template(qwen_tokenizer, qwen3_tokenizer):
    assert end_of_turn(qwen_tokenizer) == "<|im_end|>"
    assert end_of_turn(qwen3_tokenizer) == "<|im_end|>"
    assert qwen_tokenizer.pad_token != "<|im_end|>"  # padding is never taken for the end marker


def test_truncation_shortens_the_input_and_keeps_the_answer(qwen_tokenizer):
    task = extract_task()
    long_text = record().input + "无关的尾部噪声文字。" * 300
    example = encode_example(qwen_tokenizer, task, record(long_text), 256, enable_thinking=False)
    assert example.truncated and len(example.input_ids) <= 256
    labelled = [t for t, m in zip(example.input_ids, example.completion_mask) if m]
    assert qwen_tokenizer.decode(labelled) == task.answer(record()) + "<|im_end|>"
    assert "张伟" in qwen_tokenizer.decode(example.input_ids[: example.completion_mask.index(1)])


def test_a_record_whose_answer_cannot_fit_is_reported_with_file_and_line(qwen_tokenizer):
    task = extract_task()
    fits, too_long = record(), Record(id="r2", where="data.jsonl:7", input="短", output={**GOLD, "question": "很长的问题" * 80})
    examples, problems = encode_examples(qwen_tokenizer, task, [fits, too_long], 128, enable_thinking=False)
    assert len(examples) == 1
    assert len(problems) == 1 and problems[0].startswith("data.jsonl:7:") and "max_length" in problems[0]


def test_a_batch_encodes_each_record_as_it_is_encoded_alone(qwen_tokenizer):
    task = extract_task()
    records = [record(), record("我是李娜，邮箱ln@qq.com。手机信号差。"), record(record().input + "页脚噪声。" * 300)]
    examples, problems = encode_examples(qwen_tokenizer, task, records, 256, enable_thinking=False)
    alone = [encode_example(qwen_tokenizer, task, r, 256, enable_thinking=False) for r in records]
    assert not problems and examples == alone
    assert [e.truncated for e in examples] == [False, False, True]  # the long one shortened within the batch too


def test_render_prompt_ends_where_the_answer_starts(qwen_tokenizer):
    text = render_prompt(qwen_tokenizer, [{"role": "user", "content": "你好"}], enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n")
