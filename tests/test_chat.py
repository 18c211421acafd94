"""mindone-chat: driven in a pseudo-terminal with the real SmolLM2 (a known answer, the commands, Ctrl-C during a
reply, !exit), piped without control codes, the kept cache giving the tokens of re-prefilling the conversation,
the oldest turns dropped when the conversation outgrows the positions, and the one-line errors."""

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import transformers
import yaml
from helpers import REPO, TINY

from mindone.transformers import AutoModelForCausalLM, AutoTokenizer
from mindone.transformers.chat import ChatError, ChatSession, main, updated_config

QUESTION = "What is the capital of France?"


class Terminal:
    """The chat in a pseudo-terminal: the pty is its controlling terminal, so Ctrl-C (\\x03) reaches it as SIGINT."""

    def __init__(self, argv: list):
        env = {**os.environ, "PYTHONPATH": REPO, "GLOG_v": "3"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(sys.executable, [sys.executable, "-m", "mindone.transformers.chat", *argv], env)
        self.text, self.position = "", 0

    def expect(self, pattern: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text[self.position :])
            if match:
                self.position += match.end()
                return match.group(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError(f"{pattern!r} not seen; the terminal showed:\n{self.text[-3000:]}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # the child exited
            return False
        self.text += data.decode(errors="replace")
        return bool(data)

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\r").encode())

    def exit_status(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self._read(0.2)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


@pytest.mark.slow
def test_a_session_in_a_terminal(smollm2_dir, tmp_path):
    chat = Terminal([smollm2_dir, "do_sample=False", "max_new_tokens=24"])
    chat.expect("user> ")
    chat.send(QUESTION)
    chat.expect("Paris")
    chat.expect("user> ")
    chat.send("!status")
    chat.expect("conversation: 1 turn\r?\n")
    chat.expect(r'"max_new_tokens": 24')
    chat.send("!set max_new_tokens=12 temperature=0.5 system_prompt='You answer briefly.'")
    chat.expect("set system_prompt='You answer briefly.', max_new_tokens=12, temperature=0.5")
    chat.send("!status")
    chat.expect(r"system prompt: 'You answer briefly.'")
    chat.expect(r'"max_new_tokens": 12')
    for name in ("chat.yaml", "chat.json"):
        chat.send(f"!save {tmp_path / name}")
        chat.expect("chat saved in")
    chat.send("!frobnicate")
    chat.expect(r"unknown command '!frobnicate'; commands: !help, !status, !clear")
    chat.send("!help")
    chat.expect("Ctrl-C stops the reply")
    chat.send("!set system_prompt= max_new_tokens=400")
    chat.expect("set system_prompt='', max_new_tokens=400")
    chat.send("Write a long story about a dragon who learns to cook.")
    chat.expect(r"assistant> [^\r\n]{40}")  # the reply is being written
    os.write(chat.fd, b"\x03")
    chat.expect(r"\[interrupted\]")
    chat.expect("user> ")  # keys typed while a reply is written are not read
    chat.send("!status")
    chat.expect("2 turns")  # the interrupted reply stays in the conversation
    chat.send("!clear")
    chat.expect("conversation cleared")
    chat.send("!status")
    chat.expect("0 turns")
    chat.send("!exit")
    assert chat.exit_status() == 0
    saved = yaml.safe_load((tmp_path / "chat.yaml").read_text())
    assert json.loads((tmp_path / "chat.json").read_text()) == saved
    assert [m["role"] for m in saved["chat_history"]] == ["system", "user", "assistant"]
    assert saved["chat_history"][0]["content"] == "You answer briefly."
    assert "Paris" in saved["chat_history"][2]["content"]
    assert saved["settings"]["generation"]["max_new_tokens"] == 12


@pytest.mark.slow
def test_piped_output_has_no_control_codes_and_end_of_input_exits(smollm2_dir):
    command = [sys.executable, "-m", "mindone.transformers.chat", smollm2_dir, "do_sample=False", "max_new_tokens=16",
               "--mode", "pynative"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(command, input=QUESTION + "\n", capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Paris" in done.stdout and "assistant> " in done.stdout
    assert "\x1b" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)


TURNS = ["What is the capital of France?", "And of Italy?", "Name a river in one of them.", "Thanks! One more fact?"]


def converse(model, tokenizer, mode: str, reuse_cache: bool) -> ChatSession:
    config = updated_config(model.generation_config, {"do_sample": False, "max_new_tokens": 16})
    session = ChatSession(model, tokenizer, config, mode=mode, reuse_cache=reuse_cache, out=io.StringIO())
    session.turns = []
    for text in TURNS:
        session.reply(text)
        session.turns.append(dict(session.last))
    return session


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_the_kept_cache_gives_the_tokens_of_re_prefilling_the_conversation(smollm2, mode):
    model, tokenizer = smollm2
    kept = converse(model, tokenizer, mode, reuse_cache=True)
    again = converse(model, tokenizer, mode, reuse_cache=False)
    assert [t["new_ids"] for t in kept.turns] == [t["new_ids"] for t in again.turns]
    assert kept.messages == again.messages
    for turn in kept.turns[1:]:  # only the new message (and the template's joints) is prefilled
        assert turn["prefilled_tokens"] < 0.5 * turn["prompt_tokens"]
    assert all(t["prefilled_tokens"] == t["prompt_tokens"] for t in again.turns)


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, smollm2_dir):
    """A tiny random Llama with SmolLM2's tokenizer and chat template and only 128 positions."""
    directory = tmp_path_factory.mktemp("short_chat")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(**{**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 128})
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_the_oldest_turns_are_dropped_when_the_conversation_outgrows_the_positions(short_model, mode):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(short_model), AutoTokenizer.from_pretrained(short_model)
    config = updated_config(model.generation_config, {"do_sample": False, "max_new_tokens": 8, "eos_token_id": None})
    out = io.StringIO()
    session = ChatSession(model, tokenizer, config, mode=mode, out=out)
    for turn in range(6):
        session.reply(f"Message number {turn} of a conversation that grows.")
    assert "the conversation outgrew the model's 128 positions: dropped the oldest" in out.getvalue()
    assert session.messages[-2]["content"] == "Message number 5 of a conversation that grows."
    assert session.last["prompt_tokens"] + 8 <= 128
    kept = list(session.messages)
    with pytest.raises(ChatError, match="exceeds the model's 128 positions; send a shorter message"):
        session.reply("word " * 200)
    assert session.messages == kept  # the refused message is not kept, and the history stays


@pytest.mark.parametrize(
    "argv, message",
    [
        (["MODEL", "--frobnicate"], "mindone-chat: error: unrecognized arguments: --frobnicate (options: --dtype"),
        (["MODEL", "max_new_tokens=abc"], "error: max_new_tokens='abc' is not valid: expected an integer"),
        (["MODEL", "do_sample=maybe"], "error: do_sample='maybe' is not valid: expected True or False"),
        (["MODEL", "frobnicate=1"], "error: unknown setting 'frobnicate'; accepted: GenerationConfig fields"),
        (["MODEL", "max_new_tokens"], "error: 'max_new_tokens' is not key=value"),
        (["/nonexistent/model"], "error: cannot load model '/nonexistent/model'"),
        (["NO_TEMPLATE"], "has no chat template (tokenizer_config.json 'chat_template'); chat needs an instruction-tuned"),
    ],
)
def test_bad_input_is_one_line(short_model, tmp_path, capsys, argv, message):
    no_template = tmp_path / "no_template"
    tokenizer = transformers.AutoTokenizer.from_pretrained(short_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(no_template)
    for name in ("config.json", "model.safetensors"):
        os.link(os.path.join(short_model, name), no_template / name)
    argv = [{"MODEL": short_model, "NO_TEMPLATE": str(no_template)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    text = str(exited.value.code) if isinstance(exited.value.code, str) else capsys.readouterr().err
    assert message in text
    assert text.strip().count("\n") == 0
