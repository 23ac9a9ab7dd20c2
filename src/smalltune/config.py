"""The task file: one YAML document, validated by pydantic, read by every stage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from smalltune.errors import ConfigError, validation_problems
from smalltune.io import LONE_SURROGATE, atomic_write_text
from smalltune.registry import AUTO_ENGINE, ENGINES, FORMATS, KINDS


_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TASK_FILE_SUFFIXES = (".yaml", ".yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FieldType = Literal["string", "list", "choice", "integer", "number", "date", "boolean", "lines"]
TEXT_TYPES = ("string", "list")
"""The types whose values (a list's items) are text and may be copied from the input (`extractive`)."""


class FieldSpec(_Strict):
    """One output field of an extraction task: its type, whether it may be null, and whether it is copied."""

    description: str = ""
    type: FieldType = Field("string", description="string ('' when absent) | list (of strings, [] when none) | "
                            "choice (one of `choices`) | integer | number | date (YYYY-MM-DD) | boolean | lines (whole lines "
                            "of the input, answered as line ranges and returned as their text; '' when none)")
    optional: bool = Field(False, description="JSON null when absent (never a made-up value)")
    choices: list[str] | None = Field(None, validate_default=True, description="The values of a choice field.")
    extractive: bool | None = Field(None, validate_default=True,
                                    description="The value (each item of a list) is copied verbatim from the input "
                                    "text; string and list only (their default; None becomes it on validation)")
    max_items: int | None = Field(None, ge=1, description="A list's most items (JSON Schema maxItems): constrained "
                                  "decoding closes the list there, so a model that repeats an item cannot write past "
                                  "its token budget; data check refuses longer lists.")

    @field_validator("optional")
    @classmethod
    def _list_is_never_null(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("type") == "list":
            raise ValueError("a list is [] when it has no items, never null: drop optional")
        if value and info.data.get("type") == "lines":
            raise ValueError("a lines field is '' when it has no lines, never null: drop optional")
        return value

    @field_validator("choices")
    @classmethod
    def _choices_of_a_choice(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = info.data.get("type")
        if kind is None:
            return value  # the type itself was refused
        if kind != "choice":
            if value is not None:
                raise ValueError(f"only a choice field has choices (this one is {kind}): drop choices or set type: choice")
            return value
        if not value:
            raise ValueError("a choice field needs its choices, e.g. choices: [低, 中, 高]")
        if len(set(value)) < len(value):
            raise ValueError(f"choices {value} name a value twice")
        return value

    @field_validator("max_items")
    @classmethod
    def _max_items_of_a_list(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("type")
        if value is not None and kind is not None and kind != "list":
            raise ValueError(f"only a list field has max_items (this one is {kind}): drop max_items or set type: list")
        return value

    @field_validator("extractive")
    @classmethod
    def _extractive_text_only(cls, value: bool | None, info: ValidationInfo) -> bool:
        kind = info.data.get("type", "string")
        if value is None:
            return kind in TEXT_TYPES
        if value and kind == "lines":
            raise ValueError("a lines field is built from the input's own lines, never written out: drop extractive")
        if value and kind not in TEXT_TYPES:
            raise ValueError(f"a {kind} field is not copied from the text: drop extractive (string and list only)")
        return value


_PROPERTY_KEYS = ("type", "description", "title", "enum", "format", "items", "maxItems", "extractive")
_SCALAR_TYPES = ("string", "integer", "number", "boolean")


def fields_from_schema(schema: object) -> dict[str, dict[str, Any]]:
    """The `fields:` mapping a JSON Schema object stands for (flat: string, array of strings, enum of strings,
    integer, number, string with format date, boolean; optional: not required, or null among its types).

    Raises ValueError naming the schema key it cannot read.
    """
    if not isinstance(schema, dict) or schema.get("type", "object") != "object" \
            or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise ValueError("schema: must be a JSON Schema object with properties, e.g. "
                         "{type: object, properties: {name: {type: string}}, required: [name]}")
    properties, required = schema["properties"], schema.get("required", [])
    if not isinstance(required, list) or any(name not in properties for name in required):
        raise ValueError(f"schema.required: must list names of properties, not {required!r}")
    return {name: _field_of(f"schema.properties.{name}", prop, name in required) for name, prop in properties.items()}


def _field_of(key: str, prop: object, required: bool) -> dict[str, Any]:
    """One property of a JSON Schema as a field's settings; ValueError naming `key` when it has no field type."""
    if not isinstance(prop, dict):
        raise ValueError(f"{key}: must be a mapping such as {{type: string}}")
    types = prop.get("type", "string")
    types = types if isinstance(types, list) else [types]
    if "object" in types or "properties" in prop:
        raise ValueError(f"{key}: nested objects are not supported: make its properties top-level ones")
    unknown = sorted(set(prop) - set(_PROPERTY_KEYS))
    if unknown:
        raise ValueError(f"{key}: {unknown} not supported; a property may have {', '.join(_PROPERTY_KEYS)}")
    kind = _field_type(key, [t for t in types if t != "null"], prop)
    field: dict[str, Any] = {"description": prop.get("description", ""), "type": kind}
    field.update({"extractive": prop["extractive"]} if "extractive" in prop else {})
    field.update({"max_items": prop["maxItems"]} if "maxItems" in prop else {})
    if kind == "choice":
        field["choices"] = [value for value in prop["enum"] if value is not None]
    if not required or "null" in types or None in prop.get("enum", ()):
        if kind == "list":
            raise ValueError(f"{key}: an array is [] when empty, never null: list it in 'required', without null")
        field["optional"] = True
    return field


def _field_type(key: str, types: list[Any], prop: dict[str, Any]) -> str:
    """The field type of a property whose non-null JSON types are `types`; ValueError naming `key` otherwise."""
    if "enum" in prop:
        if types != ["string"] or not isinstance(prop["enum"], list) \
                or not all(value is None or isinstance(value, str) for value in prop["enum"]):
            raise ValueError(f"{key}.enum: must be a list of strings (and null), of a string property")
        return "choice"
    if types == ["array"]:
        if prop.get("items") != {"type": "string"}:
            raise ValueError(f"{key}.items: must be {{type: string}} (only arrays of strings are supported)")
        return "list"
    if len(types) != 1 or types[0] not in _SCALAR_TYPES or "items" in prop:
        raise ValueError(f"{key}.type: {prop.get('type')!r} is not one of string, array (with items), integer, "
                         "number, boolean (each with null or not)")
    if prop.get("format", "date") != "date" or ("format" in prop and types != ["string"]):
        raise ValueError(f"{key}.format: only format: date (of a string) is supported, not {prop['format']!r}")
    return "date" if "format" in prop else types[0]


def _schema_file(path: Path) -> object:
    """The JSON Schema in a .json file; ValueError naming the `schema` key when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ValueError(f"schema: cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"schema: {path} is not a JSON file: {exc}") from exc


class DataConfig(_Strict):
    """Where the examples are and how to read them."""

    train: Path
    validation: Path | None = None
    test: Path | None = None
    format: str = Field("alpaca", description=f"How a row holds a record: {' | '.join(FORMATS.names())}.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="For format=columns: our name (input, output, instruction, system, candidates, id) -> column name; "
        "format=alpaca reads per-record label choices from the column mapped as candidates.",
    )
    validation_share: float = Field(0.1, ge=0, lt=0.5, description="Split off train when no validation file.")
    test_share: float = Field(0.1, ge=0, lt=0.5, description="Split off train when no test file.")
    split_seed: int = 42

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return FORMATS.check(value)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - {"input", "output", "instruction", "system", "candidates", "id"}
        if unknown:
            raise ValueError(f"unknown column roles {sorted(unknown)}; use input, output, instruction, system, candidates, id")
        return value


class ModelConfig(_Strict):
    """Which model to tune and how to load it."""

    name: str = Field("default", description="'default', a local HF directory, a .gguf file or a hub id.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enable_thinking: bool = Field(False, description="Qwen3 thinking; off in training and inference alike.")
    max_length: int = Field(512, ge=16, description="Prompt + answer tokens; the input is shortened, never the answer.")
    chat_template: Path | None = Field(None, description="A .jinja file for models that ship none.")
    line_chars: int | None = Field(
        80, ge=1, description="With a `lines` field the input is shown as numbered lines ([12]text), each cut after "
        "this many characters and '…' (enough to judge a line; long pages then fit); null shows lines whole.",
    )


class LoraSettings(_Strict):
    """LoRA adapter settings (rank, alpha and targets: the seed recipe's)."""

    r: int = 8
    alpha: int = 32
    dropout: float = Field(
        0.0, ge=0, lt=1, description="0 (as Unsloth and LLaMA-Factory default): the seeds' 0.1 draws a random mask "
        "over every LoRA input: training 1.24x slower on CPU (benchmarks/train_speed.py --dropout-row); it regularises",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainSettings(_Strict):
    """Optimisation settings."""

    epochs: float = 1.0
    learning_rate: float = 3e-4
    batch_size: int = Field(4, ge=1, description="examples per optimizer step in each process (x gradient_accumulation)")
    gradient_accumulation: int = Field(1, ge=1)
    micro_batch: Literal["auto"] | int = Field(
        "auto",
        description="examples the model runs at once; the rest of batch_size is accumulated into the same optimizer "
        "step (the loss is normalised by the whole step's answer tokens, so the gradient is the same). auto: the "
        "whole batch on a GPU or where its rows share their prompt opening (share_prefix), one example at a time "
        "on a CPU otherwise: as fast per token there, never padded to a longer example, a quarter of the activation "
        "memory at batch 4",
    )
    warmup_ratio: float = 0.05
    seed: int = 42
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    group_by_length: bool = True
    logits: Literal["labelled", "trl"] = Field(
        "labelled",
        description="labelled: the LM head and the loss run only at answer positions, never building the "
        "151,936-wide logits of the prompt (on CUDA with Triton this is TRL's fused head, in vocabulary tiles); "
        "trl: TRL's own loss everywhere (on CPU it scores every position).",
    )
    share_prefix: Literal["auto", "on", "off"] = Field(
        "auto",
        description="the opening every example of a batch has in common (system prompt, instruction, label list) "
        "runs once per batch and its keys and values serve every row: fewer tokens computed for the same loss and "
        "gradients. auto: on without LoRA dropout (with dropout the rows would share the opening's dropout mask); "
        "never with gradient checkpointing or more than one process",
    )
    loss: Literal["answer", "choices"] = Field(
        "answer",
        description="answer: cross-entropy of the answer's tokens and its end-of-turn token. choices (classify): "
        "cross-entropy of the gold label among the record's candidates, each scored as infer.classify: score "
        "scores it (its tokens' summed log-probability after the prompt), so training optimises the scores the "
        "answers are chosen by; one process, no gradient checkpointing",
    )
    liger_kernel: Literal["auto", "on", "off"] = Field(
        "auto", description="Liger's fused Triton kernels (RMSNorm, SwiGLU, RoPE); auto: on with CUDA and liger-kernel installed."
    )
    logging_steps: int = 5
    save_steps: int = Field(25, description="Checkpoint (and, with a validation split, evaluate) every N steps.")
    report_to: Literal["swanlab", "swanlab-cloud", "tensorboard", "none"] = Field(
        "swanlab",
        description="Where loss, learning rate, grad norm and validation metrics go: swanlab (offline, in the run "
        "directory), swanlab-cloud (after `swanlab login`), tensorboard (in the run directory) or none.",
    )

    @field_validator("micro_batch")
    @classmethod
    def _divides_the_batch(cls, micro_batch: str | int, info: ValidationInfo) -> str | int:
        batch = info.data.get("batch_size")
        if micro_batch != "auto" and batch is not None and (micro_batch < 1 or batch % micro_batch):
            raise ValueError(f"{micro_batch} does not divide train.batch_size {batch}; use a divisor of it or auto")
        return micro_batch


class InferSettings(_Strict):
    """Generation settings shared by eval, predict and serve."""

    engine: str = Field(
        AUTO_ENGINE, description=f"the engine eval, predict and serve answer with ({' | '.join(ENGINES.names())}; "
        "--engine overrides it). auto: openvino on a CPU for tasks that decode their answers, where OpenVINO GenAI is "
        "installed and reads the model (Qwen2/Qwen3), else transformers",
    )
    batch_size: int = 16
    max_new_tokens: int = 256
    constrained: bool = Field(True, description="decode only valid answers: the declared JSON fields, or one label")
    grounded: bool = Field(True, description="with constrained: extractive field values can only be text from the input")
    repetition_penalty: float = Field(
        1.0, gt=0, description="above 1 makes tokens already in the prompt or the answer less likely (chat: 1.1 breaks "
        "greedy loops such as 臣妾不敢，臣妾不敢，…); 1 = plain greedy, which extraction wants",
    )
    merge_adapter: bool = Field(
        True, description="predict, serve and eval's fine-tuned pass fold the LoRA weights into the base model (faster)"
    )
    classify: Literal["score", "generate"] = Field(
        "score", description="how a classify task answers. score: the prompt runs once, then each candidate label "
        "(its text and the end-of-turn token, the completion training teaches) is scored after it, sharing the "
        "prompt's KV cache; the likeliest label is the answer and every answer carries each candidate's probability "
        "(`scores`). generate: the label is decoded token by token (one of the candidates when constrained), "
        "without probabilities; the vLLM engine answers this way only",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        return value if value == AUTO_ENGINE else ENGINES.check(value)


class EvalSettings(_Strict):
    """What `smalltune eval` compares the fine-tuned model against."""

    few_shot: int = Field(default=3, ge=0, description="k training examples in the untuned model's prompt; 0 = skip")
    baselines: list[str] = Field(default_factory=list, description="registered baselines (smalltune.registry.BASELINES)")


class TeacherConfig(_Strict):
    """The model `smalltune label` asks for answers: any OpenAI-compatible chat-completions endpoint."""

    base_url: str = Field("https://api.openai.com/v1", description="The endpoint, up to and including /v1.")
    model: str | None = Field(None, description="The teacher's model name (required here or as --model).")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the key; null for none.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(None, gt=0, description="Start at most this many requests a minute.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one answer before retrying.")
    max_retries: int = Field(5, ge=0, description="Retries of one request after 429, 5xx, timeouts, lost connections.")
    backoff: float = Field(1.0, ge=0, description="Seconds before the first retry; doubled for each next one.")
    max_backoff: float = Field(60.0, ge=0, description="Longest wait between retries (a Retry-After header is honoured up to this).")
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1, description="Longest answer, in tokens.")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema", description="extract: the strictest JSON mode to ask for; weaker ones follow if the endpoint refuses it.")
    price_input: float = Field(0.0, ge=0, description="Price per million input tokens (for the cost tally).")
    price_output: float = Field(0.0, ge=0, description="Price per million output tokens.")
    currency: str = "USD"


class TaskConfig(_Strict):
    """Everything a run needs, from data to deployment."""

    name: str = Field(description="The run directory's name under output_dir: one folder name (letters, digits, _-.).")
    kind: str = Field(description=f"The task kind: {' | '.join(KINDS.names())}.")
    instruction: str = ""
    system: str | None = None
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    teacher: TeacherConfig | None = Field(None, description="For `smalltune label`: the model that labels raw texts.")
    output_dir: Path = Path("runs")

    @model_validator(mode="before")
    @classmethod
    def _schema_as_fields(cls, data: Any, info: ValidationInfo) -> Any:
        """`schema:` (a JSON Schema, inline or a .json file relative to the task file) read as `fields:`."""
        if not isinstance(data, dict) or "schema" not in data:
            return data
        if "fields" in data:
            raise ValueError("give the fields as 'fields' or as 'schema', not both")
        schema = data["schema"]
        if isinstance(schema, str):
            schema = _schema_file(Path((info.context or {}).get("base", ".")) / schema)
        return {**{k: v for k, v in data.items() if k != "schema"}, "fields": fields_from_schema(schema)}

    @field_validator("fields", mode="before")
    @classmethod
    def _field_shorthand(cls, value: object) -> object:
        """Accept `name: "description"` as shorthand for `name: {description: ...}`."""
        if isinstance(value, dict):
            return {k: {"description": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        """The run directory is output_dir/name: a name climbing out of output_dir or into a sub-folder is refused."""
        if not _RUN_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not one folder name: use letters, digits, '_', '-' and '.' "
                             "(not '.' or '..'), e.g. name: my-task; the run directory is output_dir/name")
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return KINDS.check(value)

    @model_validator(mode="after")
    def _kind_needs(self) -> TaskConfig:
        """The kind's own requirements (extract needs fields, classify needs labels), checked by the kind."""
        problem = KINDS.get(self.kind).config_problem(self)
        if problem:
            raise ValueError(problem)
        if self.train.loss == "choices" and not KINDS.get(self.kind).takes_candidates:
            raise ValueError(f"train.loss: choices needs a kind that answers among candidates (classify), not "
                             f"{self.kind!r}; use train.loss: answer")
        return self

    @property
    def run_dir(self) -> Path:
        """The run directory: output_dir/name."""
        return self.output_dir / self.name


class _TaskFileProblem(Exception):
    """A task file that YAML reads but smalltune does not accept: a key given twice, a lone surrogate."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _TaskFileLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last one silently) and
    text holding a lone surrogate (a \\ud800 escape; no tokenizer can encode it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _TaskFileProblem(line, f"key {key!r} is given twice (lines {first[key]} and {line}); "
                                                 "YAML would keep only the last one: keep one of them")
                first[key] = line
            except TypeError:  # an unhashable key: YAML's own error follows
                continue
        return super().construct_mapping(node, deep)

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and LONE_SURROGATE.search(value):
            raise _TaskFileProblem(node.start_mark.line + 1, "the text holds a lone surrogate (half of a UTF-16 "
                                   "pair, from an escape such as \\ud800): write the character itself")
        return value


def _task_file_text(path: Path) -> str:
    """The task file's text: UTF-8 (with or without BOM), or ConfigError naming the line that is not."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the task file in it (e.g. {path / 'task.yaml'})")
    if not path.is_file():
        raise ConfigError(f"{path}: no such task file")
    if path.suffix.lower() not in _TASK_FILE_SUFFIXES:
        raise ConfigError(f"{path}: not a task file: give the task's YAML file (.yaml or .yml, e.g. task.yaml; "
                          "`smalltune init` writes one); a data file goes in the task file, as data.train")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the task file as "
                          "UTF-8 (in Notepad: Save As, Encoding: UTF-8)") from exc


def load_config(path: str | Path) -> TaskConfig:
    """Read and validate a task file; relative data paths are resolved against the file's folder."""
    path = Path(path)
    text = _task_file_text(path)
    try:
        raw = yaml.load(text, Loader=_TaskFileLoader) or {}
    except _TaskFileProblem as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the task file must be a mapping of keys to values")
    try:
        config = TaskConfig.model_validate(raw, context={"base": path.parent})
    except ValidationError as exc:
        problems = "\n".join(f"  {line}" for line in validation_problems(exc.errors()))
        raise ConfigError(f"{path}: invalid task file:\n{problems}") from exc
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: TaskConfig, base: Path) -> TaskConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None else (base / p).resolve()

    data = config.data.model_copy(
        update={"train": fix(config.data.train), "validation": fix(config.data.validation), "test": fix(config.data.test)}
    )
    updates = {"data": data, "output_dir": fix(config.output_dir)}
    if config.model.chat_template is not None:
        updates["model"] = config.model.model_copy(update={"chat_template": fix(config.model.chat_template)})
    return config.model_copy(update=updates)


def save_config(config: TaskConfig, path: Path) -> None:
    """Write the resolved config as YAML (the copy kept in a run directory)."""
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
