"""Input rows of a batch job: parsed, checked and tokenized one by one, so a bad row becomes an error row and the
rest of the job goes on."""

import copy
import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from transformers import GenerationConfig

from ..generation.configuration_utils import check_meaningful

ROW_FIELDS = {"id", "prompt", "messages", "generation"}
# options that make one input row produce something other than one completion
ROW_REFUSED_OPTIONS = {"num_return_sequences", "return_dict_in_generate", "output_scores", "output_logits",
                       "output_attentions", "output_hidden_states", "streamer"}  # fmt: skip
GENERATION_OPTIONS = set(GenerationConfig().to_dict()) - {"transformers_version", "_from_model_config"}


class RowError(ValueError):
    """A problem with one input row; becomes that row's error message."""


@dataclass
class Request:
    line: int
    id: Any
    prompt: Optional[str] = None
    messages: Optional[list] = None
    overrides: dict = field(default_factory=dict)
    token_ids: list = field(default_factory=list)
    generation_config: Optional[GenerationConfig] = None

    @property
    def options_key(self) -> str:
        """Rows can share a batch only when this is equal (same effective generation options)."""
        return json.dumps(self.generation_config.to_diff_dict(), sort_keys=True, default=str)


def read_lines(path: str) -> list:
    """All lines of the input file; an unreadable file fails the job at once."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: cannot read --input {path}: {err}") from None


def error_row(line: int, message: str, row_id: Any = None, has_id: bool = False, **extra) -> dict:
    row = {"id": row_id} if has_id else {}
    return {**row, "line": line, "error": message, **extra}


def parse_requests(lines: list, lines_wanted=None):
    """Returns (requests, error rows) for the non-blank input lines (1-based numbers) that `lines_wanted` accepts
    (all when None). Ids must be unique across the whole file, so every line is parsed for its id."""
    requests, errors, first_line_of = [], [], {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        wanted = lines_wanted is None or lines_wanted(number)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            if wanted:
                errors.append(error_row(number, f"invalid JSON ({err.msg} at column {err.colno})"))
            continue
        has_id = isinstance(row, dict) and "id" in row
        key = json.dumps(row.get("id"), sort_keys=True) if has_id else None
        if has_id and key in first_line_of:
            if wanted:
                errors.append(error_row(number, f"duplicate id {key} (first used on line {first_line_of[key]}); ids must be unique",
                                        row["id"], True, duplicate_of_line=first_line_of[key]))  # fmt: skip
            continue
        if has_id:
            first_line_of[key] = number
        if not wanted:
            continue
        try:
            requests.append(_request(number, row))
        except RowError as err:
            errors.append(error_row(number, str(err), row.get("id") if has_id else None, has_id))
    return requests, errors


def _request(number: int, row) -> Request:
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object with id and prompt (or messages), got {type(row).__name__}")
    unknown = sorted(set(row) - ROW_FIELDS)
    if unknown:
        raise RowError(f"unknown field(s) {', '.join(unknown)}; a row has id, prompt or messages, and optional generation")
    if "id" not in row:
        raise RowError("missing id; every row needs a unique id")
    if ("prompt" in row) == ("messages" in row):
        raise RowError("a row needs exactly one of prompt (a string) or messages (a chat as [{role, content}, ...])")
    if "prompt" in row and (not isinstance(row["prompt"], str) or not row["prompt"]):
        raise RowError("prompt must be a non-empty string")
    if "messages" in row and not _is_chat(row["messages"]):
        raise RowError("messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    overrides = row.get("generation", {})
    if not isinstance(overrides, dict):
        raise RowError("generation must be an object of generation options, e.g. {\"max_new_tokens\": 20}")
    check_options(overrides)
    return Request(number, row["id"], row.get("prompt"), row.get("messages"), overrides)


def _is_chat(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    )


def check_options(options: dict) -> None:
    unknown = sorted(set(options) - GENERATION_OPTIONS)
    if unknown:
        raise RowError(f"unknown generation option(s) {', '.join(unknown)}; use GenerationConfig fields such as "
                       "max_new_tokens, do_sample, temperature, top_k, top_p, num_beams")  # fmt: skip
    refused = sorted(k for k in set(options) & ROW_REFUSED_OPTIONS if options[k] not in (None, False, 1))
    if refused:
        raise RowError(f"generation option(s) {', '.join(refused)} are not available in batch jobs (one completion per row)")


def prepare(request: Request, tokenizer, base_config: GenerationConfig, max_positions: Optional[int]) -> Request:
    """Builds the row's generation config and token ids, and checks that it fits the model."""
    config = copy.deepcopy(base_config)
    config.update(**request.overrides)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config.validate()
        check_meaningful(config)
    except ValueError as err:
        raise RowError(f"invalid generation options: {str(err).splitlines()[0]}") from None
    if request.messages is not None:
        if not tokenizer.chat_template:
            raise RowError("messages need a chat template, and this model's tokenizer has none; send a prompt instead")
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(request.prompt)["input_ids"]
    if not ids:
        raise RowError("the prompt encodes to no tokens")
    new_tokens = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - len(ids)
    if new_tokens <= 0:
        raise RowError(f"the prompt has {len(ids)} tokens, which leaves no room under max_length {config.max_length}; "
                       "set max_new_tokens")  # fmt: skip
    if max_positions is not None and len(ids) + new_tokens > max_positions:
        raise RowError(f"the prompt has {len(ids)} tokens; with {new_tokens} new tokens that exceeds the model's "
                       f"{max_positions} positions; shorten the prompt or lower max_new_tokens")  # fmt: skip
    request.token_ids, request.generation_config = ids, config
    return request
