"""The task file: defaults, clear errors naming the key, and the commented example from `init`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smalltune.cli import app
from smalltune.config import load_config
from smalltune.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "task.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_gets_the_default_lora_settings_and_resolves_paths(tmp_path):
    config = load_config(write(tmp_path, "name: c\nkind: extract\nfields: {name: 姓名}\ndata: {train: d/train.jsonl}\n"))
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 32, 0.0)
    assert "down_proj" in config.lora.target_modules
    assert config.data.train == tmp_path / "d" / "train.jsonl"
    assert config.fields["name"].description == "姓名"
    assert config.model.enable_thinking is False


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: c\nkind: extract\nfields: {a: b}\ndata: {train: x}\nlora: {r: many}\n", "lora.r"),
        ("name: c\nkind: extract\nfields: {a: b}\ndata: {train: x}\ntrain: {epochz: 2}\n", "train.epochz"),
        ("name: c\nkind: summarise\ndata: {train: x}\n", "kind"),
        ("name: c\nkind: extract\ndata: {train: x}\n", "fields"),
        ("name: c\nkind: classify\ndata: {train: x}\n", "labels"),
        ("name: c\nkind: chat\n", "data"),
        ("name: c\nkind: extract\nfields: {p: {type: money}}\ndata: {train: x}\n", "fields.p.type"),
        ("name: c\nkind: extract\nfields: {p: {type: choice}}\ndata: {train: x}\n", "fields.p.choices"),
        ("name: c\nkind: extract\nfields: {p: {choices: [a, b]}}\ndata: {train: x}\n", "fields.p.choices"),
        ("name: c\nkind: extract\nfields: {n: {type: number, extractive: true}}\ndata: {train: x}\n",
         "fields.n.extractive"),
        ("name: c\nkind: extract\nfields: {c: {type: list, optional: true}}\ndata: {train: x}\n", "fields.c.optional"),
        ("name: c\nkind: extract\nschema: {properties: {a: {type: money}}}\ndata: {train: x}\n",
         "schema.properties.a.type"),
        ("name: c\nkind: extract\nschema: {properties: {a: {type: object, properties: {b: {type: string}}}}}\n"
         "data: {train: x}\n", "schema.properties.a: nested objects"),
        ("name: c\nkind: extract\nschema: {properties: {a: {type: array, items: {type: integer}}}}\n"
         "data: {train: x}\n", "schema.properties.a.items"),
        ("name: c\nkind: extract\nschema: {properties: {a: {type: string}}, required: [b]}\ndata: {train: x}\n",
         "schema.required"),
        ("name: c\nkind: extract\nschema: {properties: {a: {type: string, pattern: x}}}\ndata: {train: x}\n",
         "schema.properties.a: ['pattern'] not supported"),
        ("name: c\nkind: extract\nschema: missing.json\ndata: {train: x}\n", "schema: cannot read"),
        ("name: c\nkind: extract\nfields: {a: b}\nschema: {properties: {a: {type: string}}}\ndata: {train: x}\n",
         "not both"),
        ("name: c\nkind: extract\nfields: {a: b}\ndata: {train: x}\ntrain: {batch_size: 4, micro_batch: 3}\n",
         "train.micro_batch: Value error, 3 does not divide train.batch_size 4"),
        ("name: c\nkind: extract\nfields: {a: b}\ndata: {train: x}\ninfer: {engine: onnx}\n",
         "infer.engine: Value error, unknown inference engine 'onnx'"),
    ],
)
def test_errors_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value) and "task.yaml" in str(err.value)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such task file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))


@pytest.mark.parametrize("kind", ["extract", "classify", "chat"])
def test_init_writes_a_valid_commented_example(tmp_path, kind):
    out = tmp_path / f"{kind}.yaml"
    result = CliRunner().invoke(app, ["init", "--kind", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.kind == kind and "#" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", "", "a\\b", "/abs"])
def test_a_run_name_must_be_one_folder_name(tmp_path, name):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"name: '{name}'\nkind: extract\nfields: {{a: b}}\ndata: {{train: x}}\n"))
    assert "  name: " in str(err.value) and "not one folder name" in str(err.value)


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("name: c\nkind: extract\nname: d\nfields: {a: b}\ndata: {train: x}\n", "name", (1, 3)),
    ("name: c\nkind: extract\nfields: {a: b}\ndata:\n  train: x\n  format: alpaca\n  train: y\n", "train", (5, 7)),
])
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, text, key, lines):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert f"task.yaml:{lines[1]}: key '{key}' is given twice (lines {lines[0]} and {lines[1]})" in str(err.value)


def test_a_gbk_task_file_is_a_clear_error_asking_for_utf8(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_bytes("name: c\nkind: extract\nfields: {name: 姓名}\ndata: {train: x}\n".encode("gbk"))
    with pytest.raises(ConfigError, match=r"task\.yaml:3: not UTF-8 text \(byte 0x.*save the task file as UTF-8"):
        load_config(path)


def test_a_data_file_where_a_task_file_is_expected_says_so(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.jsonl: not a task file: give the task's YAML file"):
        load_config(data)


def test_a_lone_surrogate_in_the_task_file_names_its_line(tmp_path):
    with pytest.raises(ConfigError, match=r"task\.yaml:2: the text holds a lone surrogate"):
        load_config(write(tmp_path, 'name: c\ninstruction: "bad \\ud800"\nkind: chat\ndata: {train: x}\n'))


TYPED = """name: c
kind: extract
data: {train: x.jsonl}
fields:
  name: 投诉人姓名
  email: {description: 投诉人邮箱, optional: true}
  companies: {description: 公司名, type: list}
  priority: {type: choice, choices: [低, 中, 高]}
  amount: {type: number}
  signed: {type: date}
  urgent: {type: boolean}
"""
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "投诉人姓名"},
        "email": {"type": "string", "description": "投诉人邮箱"},
        "companies": {"type": "array", "items": {"type": "string"}, "description": "公司名"},
        "priority": {"enum": ["低", "中", "高"]},
        "amount": {"type": "number"},
        "signed": {"type": "string", "format": "date"},
        "urgent": {"type": "boolean"},
    },
    "required": ["name", "companies", "priority", "amount", "signed", "urgent"],
}


def test_typed_fields_read_with_their_defaults_and_the_short_form_stays_a_string(tmp_path):
    fields = load_config(write(tmp_path, TYPED)).fields
    assert [spec.type for spec in fields.values()] == ["string", "string", "list", "choice", "number", "date", "boolean"]
    assert (fields["name"].description, fields["name"].optional, fields["name"].extractive) == ("投诉人姓名", False, True)
    assert fields["email"].optional and fields["companies"].extractive
    assert fields["priority"].choices == ["低", "中", "高"] and not fields["priority"].extractive


def test_a_json_schema_inline_or_in_a_file_beside_the_task_file_reads_as_the_same_fields(tmp_path):
    expected = list(load_config(write(tmp_path, TYPED)).fields.items())  # in order: the answer's order
    head = "name: c\nkind: extract\ndata: {train: x.jsonl}\n"
    inline = load_config(write(tmp_path, head + yaml.safe_dump({"schema": SCHEMA}, allow_unicode=True, sort_keys=False)))
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "fields.json").write_text(json.dumps(SCHEMA, ensure_ascii=False), encoding="utf-8")
    from_file = load_config(write(tmp_path, head + "schema: schemas/fields.json\n"))
    assert list(inline.fields.items()) == list(from_file.fields.items()) == expected
    nullable = {**SCHEMA, "required": list(SCHEMA["properties"])}
    nullable["properties"] = {**SCHEMA["properties"], "email": {"type": ["string", "null"], "description": "投诉人邮箱"}}
    text = head + yaml.safe_dump({"schema": nullable}, allow_unicode=True, sort_keys=False)
    assert list(load_config(write(tmp_path, text)).fields.items()) == expected


def test_max_items_is_a_list_setting_also_read_from_a_schema_max_items(tmp_path):
    head = "name: c\nkind: extract\ndata: {train: x.jsonl}\n"
    schema = {"type": "object", "required": ["companies"],
              "properties": {"companies": {"type": "array", "items": {"type": "string"}, "maxItems": 5}}}
    text = head + yaml.safe_dump({"schema": schema}, allow_unicode=True, sort_keys=False)
    assert load_config(write(tmp_path, text)).fields["companies"].max_items == 5
    with pytest.raises(ConfigError, match="only a list field has max_items"):
        load_config(write(tmp_path, head + "fields:\n  name: {type: string, max_items: 3}\n"))
    with pytest.raises(ConfigError, match="max_items"):
        load_config(write(tmp_path, head + "fields:\n  companies: {type: list, max_items: 0}\n"))


def test_the_readmes_task_file_loads_as_written_with_the_defaults_it_states(tmp_path):
    """A newcomer copies the README's task file: it must load, and the values it shows must be the real defaults."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = readme.split("## The task file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme.yaml").write_text(example, encoding="utf-8")
    (tmp_path / "minimal.yaml").write_text("name: x\nkind: extract\nfields: {a: b}\ndata: {train: t.jsonl}\n")
    assert load_config(tmp_path / "readme.yaml").name == "complaints"
    defaults = load_config(tmp_path / "minimal.yaml")
    for section in ("model", "lora", "train", "infer"):
        shown = yaml.safe_load(example)[section]
        assert shown == {key: getattr(getattr(defaults, section), key) for key in shown}, section
