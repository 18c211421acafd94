"""`mindone-chat MODEL [key=value ...]` (also `python -m mindone.transformers.chat`): talk to a model in a terminal,
as `transformers chat MODEL` does, with the conversation's key/value cache kept between turns so that each turn
prefills only what is new.

MODEL is a model directory or a .gguf file; generation settings follow it as `key=value` pairs in transformers
chat's form (`do_sample=False max_new_tokens=100 eos_token_id=[1,2]`). See docs/chat.md."""

import argparse
import ast
import contextlib
import json
import os
import select
import shlex
import signal
import sys
import threading
import time
import warnings
from typing import Optional

import numpy as np
from transformers.generation.streamers import TextStreamer

from . import backend
from .generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList, _all_rows

COMMANDS = "!help, !status, !clear, !set key=value ..., !save [FILE], !exit"
HELP = f"""Commands:
  !help                  this help
  !status                the model, the generation settings and the conversation's size
  !clear                 start a new conversation (the system prompt stays)
  !set key=value ...     change generation settings (GenerationConfig fields) or system_prompt="..."
  !save [FILE]           save the conversation and settings (FILE.json, or .yaml/.yml for YAML)
  !exit                  leave (also Ctrl-D); Ctrl-C stops the reply being written and keeps the conversation"""
DEFAULT_MAX_NEW_TOKENS = 256  # transformers chat's default
SETTINGS = {"system_prompt"}  # session settings !set accepts besides GenerationConfig fields


class ChatError(ValueError):
    """A one-line problem with what the user asked for; the session goes on where it can."""


# ---------------------------------------------------------------- generation settings as key=value
def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_settings(pairs: list, generation_config) -> tuple:
    """({field: value} for GenerationConfig fields, {setting: value} for the session's own settings) from
    `key=value` strings (values of the default's type). One ChatError names the first bad pair and what is accepted."""
    fields = generation_config.to_dict()
    parsed = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key:
            raise ChatError(f"'{pair}' is not key=value; write settings as key=value pairs, e.g. max_new_tokens=100")
        if key not in fields and key not in SETTINGS:
            raise ChatError(f"unknown setting '{key}'; accepted: GenerationConfig fields (max_new_tokens, do_sample, "
                            "temperature, top_k, top_p, repetition_penalty, ...) and system_prompt")  # fmt: skip
        value = text if key in SETTINGS else _value(text)
        _check_type(key, value, fields.get(key))
        parsed[key] = value
    session = {key: parsed.pop(key) for key in list(parsed) if key in SETTINGS}
    return parsed, session


# fields whose GenerationConfig default is None, so that the default cannot tell their type
_FIELD_TYPES = {"max_new_tokens": int, "min_new_tokens": int, "max_time": float, "top_k": int, "temperature": float,
                "top_p": float, "min_p": float, "typical_p": float, "repetition_penalty": float, "length_penalty": float,
                "no_repeat_ngram_size": int, "num_beams": int, "num_return_sequences": int, "epsilon_cutoff": float,
                "eta_cutoff": float, "prompt_lookup_num_tokens": int, "penalty_alpha": float}  # fmt: skip


def _check_type(key: str, value, default) -> None:
    numbers = (int, float)
    expected = None
    default = _FIELD_TYPES[key]() if default is None and key in _FIELD_TYPES else default
    if isinstance(default, bool):
        expected = "True or False" if not isinstance(value, bool) else None
    elif isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)) and value is not None:
        expected = "an integer"
    elif isinstance(default, float) and (not isinstance(value, numbers) or isinstance(value, bool)) and value is not None:
        expected = "a number"
    if expected:
        raise ChatError(f"{key}={value!r} is not valid: expected {expected}")


def updated_config(generation_config, settings: dict, notes: Optional[list] = None):
    """A copy of `generation_config` with `settings` applied and validated by transformers: its errors become a
    ChatError, its warnings (a setting the current mode does not use, ...) lines appended to `notes`."""
    config = generation_config.__class__.from_dict(generation_config.to_dict())
    config.update(**settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config.validate()
        except (ValueError, TypeError) as err:
            raise ChatError(f"invalid generation settings: {str(err).splitlines()[0]}") from None
    if notes is not None:
        notes += [f"note: {str(w.message).strip().splitlines()[0]}" for w in caught]
    return config


# ---------------------------------------------------------------- the conversation
class ChatSession:
    """A conversation with `model` through its chat template. With `reuse_cache` the key/value cache of the
    conversation so far is kept: a turn keeps the cached tokens that the templated conversation still starts with
    and prefills only the rest (generate() continues from a cache's tokens, as in transformers). `mode` "graph"
    decodes with compiled steps over a StaticCache, "pynative" op by op over a DynamicCache."""

    def __init__(self, model, tokenizer, generation_config, system_prompt: Optional[str] = None, mode: str = "graph",
                 reuse_cache: bool = True, max_cache_length: int = 4096, out=None, name: Optional[str] = None):  # fmt: skip
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.generation_config = generation_config
        self.system_prompt = system_prompt
        self.reuse_cache = reuse_cache
        positions = getattr(model.config, "max_position_embeddings", None) or max_cache_length
        self.limit = min(positions, max_cache_length) if mode == "graph" else positions
        self.out = out or sys.stdout
        self.cache, self.cached_ids = None, []
        self.interrupted = False
        self.last = {}  # figures of the last reply: prefilled tokens, time to first token
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if self.cache is not None:
            self.cache.reset()
        self.cached_ids = []

    def set(self, pairs: list) -> str:
        settings, session = parse_settings(pairs, self.generation_config)
        notes = []
        self.generation_config = updated_config(self.generation_config, settings, notes)
        if "system_prompt" in session:
            self.system_prompt = session["system_prompt"] or None
            self.messages = [m for m in self.messages if m["role"] != "system"]
            if self.system_prompt:
                self.messages.insert(0, {"role": "system", "content": self.system_prompt})
        return "\n".join(["set " + ", ".join(f"{k}={v!r}" for k, v in {**session, **settings}.items())] + notes)

    def status(self) -> str:
        cached = self.cache.get_seq_length() if self.cache is not None else 0
        settings = {k: v for k, v in self.generation_config.to_diff_dict().items()
                    if not k.startswith("_") and k != "transformers_version"}  # fmt: skip
        turns = len([m for m in self.messages if m["role"] == "user"])
        return "\n".join([
            f"model: {self.name} ({type(self.model).__name__}, {_dtype_name(self.model.dtype)})",
            f"mode: {self.mode}; key/value cache kept between turns: {'yes' if self.reuse_cache else 'no'} "
            f"({cached} tokens cached); positions: {self.limit}",
            f"system prompt: {self.system_prompt!r}",
            f"conversation: {turns} turn{'' if turns == 1 else 's'}",
            "generation settings: " + json.dumps(settings, sort_keys=True),
        ])  # fmt: skip

    def save(self, path: Optional[str]) -> str:
        if not path:
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            path = os.path.join("chat_history", os.path.basename(os.path.normpath(self.name)), f"chat_{stamp}.json")
        record = {"settings": {"model": self.name, "mode": self.mode, "system_prompt": self.system_prompt,
                               "generation": self.generation_config.to_diff_dict()},
                  "chat_history": self.messages}  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                yaml.safe_dump(record, f, sort_keys=False, allow_unicode=True)
            else:
                json.dump(record, f, indent=2, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        return os.path.abspath(path)

    # ------------------------------------------------------------ a turn
    def reply(self, text: str) -> str:
        """Streams the model's answer to `text` to `out` and returns it (what was written when interrupted)."""
        self.messages.append({"role": "user", "content": text})
        self.interrupted = False
        previous = signal.signal(signal.SIGINT, self._interrupt) if _main_thread() else None
        try:
            ids = self._prompt_ids()
            streamer = _Streamer(self.tokenizer, self.out)
            start = time.perf_counter()
            output, prefilled = self._generate(ids, streamer)
            streamer.end()
        except BaseException:
            self.messages.pop()
            if self.cache is not None:  # it may hold part of this turn: start the next one from nothing
                self.cache.reset()
                self.cached_ids = []
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        new_ids = output[len(ids) :]
        self.last = {"prompt_tokens": len(ids), "prefilled_tokens": prefilled,
                     "time_to_first_token": (streamer.first_time or time.perf_counter()) - start,
                     "new_tokens": len(new_ids), "new_ids": new_ids}  # fmt: skip
        answer = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if self.interrupted:
            self.out.write(" [interrupted]")
        self.out.write("\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _max_new_tokens(self) -> int:
        config = self.generation_config
        return config.max_new_tokens if config.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS

    def _prompt_ids(self) -> list:
        """The templated conversation; the oldest turns are dropped (with a note) when it no longer fits the
        model's positions with room for the reply."""
        room = self.limit - self._max_new_tokens()
        messages, dropped = list(self.messages), 0
        while True:
            ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
            if len(ids) <= room:
                break
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:
                raise ChatError(f"this message makes a prompt of {len(ids)} tokens, and with max_new_tokens="
                                f"{self._max_new_tokens()} that exceeds the model's {self.limit} positions; send a "
                                "shorter message or !set max_new_tokens=...")  # fmt: skip
            del messages[first : first + 2]  # the oldest user message and its reply
            dropped += 1
        self.messages = messages
        if dropped:
            self.out.write(f"(the conversation outgrew the model's {self.limit} positions: dropped the oldest "
                           f"{dropped} turn{'s' if dropped > 1 else ''})\n")  # fmt: skip
        return ids

    def _generate(self, ids: list, streamer) -> tuple:
        """(the prompt and reply ids, how many prompt tokens were prefilled)."""
        import mindspore as ms

        kwargs, keep = {}, 0
        if self.reuse_cache:
            keep = min(_common_prefix(self.cached_ids, ids), len(ids) - 1)
            cache = self._cache_for(len(ids) + self._max_new_tokens(), keep)
            cache.crop(keep)
            kwargs["past_key_values"] = cache
        elif self.mode == "graph":
            kwargs["cache_implementation"] = "static"
        config = self.generation_config
        if config.max_new_tokens is None:
            config = updated_config(config, {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS})
        stop = StoppingCriteriaList([_Interrupted(self)])
        output = self.model.generate(input_ids=ms.Tensor([ids], ms.int32), attention_mask=ms.Tensor([[1] * len(ids)], ms.int32),
                                     generation_config=config, streamer=streamer, stopping_criteria=stop,
                                     **kwargs).asnumpy()[0].tolist()  # fmt: skip
        if self.reuse_cache:
            self.cached_ids = output[: self.cache.get_seq_length()]
        return output, len(ids) - keep

    def _cache_for(self, needed: int, keep: int):
        """The conversation's cache, with room for `needed` positions and its first `keep` tokens. Graph mode: a
        StaticCache of the next power of two from 256 up to the limit, moved into a bigger one as the conversation
        grows: every decode step attends over all of its slots (a 4096-slot cache made each turn's first token of a
        short conversation ~3x slower than a 256-slot one, measured)."""
        from .cache_utils import DynamicCache, StaticCache
        from .generation.decoders import cache_length_for

        if self.mode != "graph":
            self.cache = self.cache if self.cache is not None else DynamicCache()
            return self.cache
        if self.cache is None or self.cache.max_cache_len < needed:
            bigger = StaticCache(self.model.layers_config, min(self.limit, cache_length_for(needed)), 1, self.model.dtype)
            if self.cache is not None and keep:
                backend.copy_cache_row(bigger, self.cache, 0, keep)
                bigger.seen_tokens = keep
            self.cache = bigger
        return self.cache

    def _interrupt(self, signum=None, frame=None) -> None:
        self.interrupted = True


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _dtype_name(dtype) -> str:
    return str(dtype).lower().replace("mindspore.", "")


class _Interrupted(StoppingCriteria):
    """Ends generation at the next step once Ctrl-C was pressed: the reply so far stays, and the cache stays valid."""

    def __init__(self, session: ChatSession):
        self.session = session

    def __call__(self, input_ids, scores, **kwargs):
        return _all_rows(input_ids, self.session.interrupted)

    def host_done(self, ids, scores):
        return np.full(ids.shape[0], self.session.interrupted)


class _Streamer(TextStreamer):
    """transformers' TextStreamer (word-boundary decoding of the new tokens) writing to `out`, noting when the
    first text of the reply arrived."""

    def __init__(self, tokenizer, out):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.first_time = out, None

    def put(self, value):
        if not self.next_tokens_are_prompt and self.first_time is None:  # the first generated token
            self.first_time = time.perf_counter()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.out.write(text)
        self.out.flush()


# ---------------------------------------------------------------- the command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, naming what is accepted
        options = ", ".join(sorted(o for a in self._actions for o in a.option_strings if o.startswith("--")))
        self.exit(2, f"{self.prog}: error: {message} (options: {options}; then key=value generation settings)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="mindone-chat", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model directory, or a .gguf file")
    parser.add_argument("generate_flags", nargs="*", metavar="key=value",
                        help="generation settings, e.g. do_sample=False max_new_tokens=100")  # fmt: skip
    parser.add_argument("--gguf_file", default=None, help="a .gguf file inside MODEL (or a path)")
    parser.add_argument("--system_prompt", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "auto"])
    parser.add_argument("--mode", default="graph", choices=["graph", "pynative"],
                        help="graph: compiled decode steps over a static cache (default); pynative: op by op")
    parser.add_argument("--keep_quantized", action="store_true", help="keep a GGUF file's quantized weights")
    parser.add_argument("--quantization", choices=["int8", "int4"], default=None,
                        help="quantize a float checkpoint's weights while loading")  # fmt: skip
    parser.add_argument("--max_cache_length", type=int, default=4096,
                        help="graph mode: positions of the conversation's static cache (at most the model's)")
    parser.add_argument("--no_cache_reuse", action="store_true",
                        help="prefill the whole conversation every turn (to compare with the kept cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.keep_quantized and not (args.gguf_file or args.model.endswith(".gguf")):
        parser.error("--keep_quantized keeps a GGUF file's quantized weights; give a .gguf MODEL or --gguf_file")
    if args.max_cache_length < 16:
        parser.error("--max_cache_length must be at least 16")
    return args


def load(args):
    """(model, tokenizer), or SystemExit with one line for an unreadable model or one without a chat template."""
    import mindspore as ms

    from .models.auto import AutoModelForCausalLM, AutoTokenizer

    path, gguf_file = args.model, args.gguf_file
    if gguf_file is None and path.endswith(".gguf") and os.path.isfile(path):
        path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.abspath(path)
    quantization = {f"load_in_{args.quantization[3:]}bit": True} if args.quantization else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit(f"error: {args.model} has no chat template (tokenizer_config.json 'chat_template'); "
                             "chat needs an instruction-tuned model, or use examples/transformers/llama/generate.py "
                             "for plain prompts")  # fmt: skip
        dtype = args.dtype if args.dtype == "auto" else getattr(ms, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype,
                                                     dequantize=not args.keep_quantized, **quantization)  # fmt: skip
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"error: cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None
    return model, tokenizer


class Terminal:
    """Reading lines and writing text; labels in bold only when stdout is a terminal (no control codes in pipes)."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        if self.tty and sys.stdin.isatty():
            import readline  # noqa: F401 - line editing and history for input()

    def bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.tty else text

    def read(self) -> str:
        return input(self.bold("user> "))

    @contextlib.contextmanager
    def ctrl_c_calls(self, stop):
        """While a reply is written, Ctrl-C on the terminal calls `stop` instead of raising SIGINT: a SIGINT during
        a compiled step reaches MindSpore's runtime, which ends the process (measured, 2.7.1). Keys other than
        Ctrl-C typed meanwhile are dropped. Without a terminal on stdin, SIGINT stays the way to stop (PyNative)."""
        if not sys.stdin.isatty():
            yield
            return
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
        quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 0, 0
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        done = threading.Event()

        def watch():
            while not done.is_set():
                if select.select([fd], [], [], 0.05)[0] and b"\x03" in os.read(fd, 256):
                    stop()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def run_command(session: ChatSession, line: str, terminal: Terminal) -> bool:
    """Runs a `!` command; False for !exit."""
    name, _, rest = line.partition(" ")
    if name == "!exit":
        return False
    if name == "!help":
        terminal.write(HELP)
    elif name == "!status":
        terminal.write(session.status())
    elif name == "!clear":
        session.clear()
        terminal.write("conversation cleared")
    elif name == "!set":
        terminal.write(session.set(shlex.split(rest)))
    elif name == "!save":
        terminal.write(f"chat saved in {session.save(rest.strip() or None)}")
    else:
        raise ChatError(f"unknown command '{name}'; commands: {COMMANDS}")
    return True


def chat_loop(session: ChatSession, terminal: Terminal) -> int:
    terminal.write(f"chatting with {session.name}; {COMMANDS} (!help explains them)")
    while True:
        try:
            line = terminal.read().strip()
        except EOFError:
            terminal.write("")
            return 0
        except KeyboardInterrupt:
            terminal.write("")
            continue
        if not line:
            continue
        try:
            if line.startswith("!"):
                if not run_command(session, line, terminal):
                    return 0
                continue
            terminal.out.write(terminal.bold("assistant> "))
            with terminal.ctrl_c_calls(session._interrupt):
                session.reply(line)
        except ValueError as err:  # ChatError, an unbalanced quote in !set, or generate() refusing the settings
            terminal.write(f"error: {str(err).splitlines()[0]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import GenerationConfig

    from .utils import set_seed

    try:  # checked against GenerationConfig's fields before the model loads, applied to the model's config after
        settings, session_settings = parse_settings(args.generate_flags, GenerationConfig())
    except ChatError as err:
        raise SystemExit(f"error: {err}") from None
    model, tokenizer = load(args)
    notes = []
    try:
        config = updated_config(model.generation_config, settings, notes)
    except ChatError as err:
        raise SystemExit(f"error: {err}") from None
    for note in notes:
        print(note, file=sys.stderr)
    set_seed(args.seed)
    system_prompt = session_settings.get("system_prompt", args.system_prompt)
    session = ChatSession(model, tokenizer, config, system_prompt, args.mode, not args.no_cache_reuse,
                          args.max_cache_length, name=args.model)  # fmt: skip
    return chat_loop(session, Terminal())


if __name__ == "__main__":
    sys.exit(main())
