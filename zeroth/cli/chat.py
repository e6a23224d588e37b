"""`zeroth chat`: talk to a run's model (or any checkpoint or model folder) in the terminal.

    zeroth chat runs/<name> [--checkpoint TAG] [--max-new-tokens N] [--temperature T]
                [--top-p P] [--seed S] [--system TEXT] [--history] [--raw]

Each line read from stdin is a question. The reply streams as it is sampled: the reasoning inside
<think>…</think> dim and italic under a "thinking" label, the rest under an "answer" label (plain
`[thinking]` / `[answer]` labels when stdout is not a terminal; --raw prints the completion as
written, tags and all). Questions are rendered with the chat template the model was trained with
(the one saved with its tokenizer) through `zeroth.models.hf.prompt_ids`, so a question looks to the
model exactly like a training prompt. zeroth's models learn from single-turn prompts, so by default
each question is asked on its own and earlier turns are not sent; --history (or /history on) keeps
the conversation instead, for models that handle several turns. Replies stream from the
generation engine the run samples with (`make_engine`: the run's `rl.engine`, the default config's
for a model folder outside a run), through the rollouts' decoder loop and stop tokens
(zeroth.rollout.decoder, `stop_ids`), so with the same seed a reply is the completion
`decoder.generate` samples, cut after `</answer>`; --top-p filters the nucleus first.

Commands: /history on|off, /reset (forget the conversation), /temp T, /top_p P, /max N, /help,
/exit (or EOF). Ctrl-C stops a reply; at the prompt it quits.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zeroth.errors import UserError
from zeroth.rollout.reply import (
    ReasoningSplitter,
    chat_ids,
    opens_thinking,
    stream_text,
    supports_history,
)

DEFAULTS = {"temperature": 0.7, "max_new_tokens": 512, "top_p": 1.0}  # for a bare model folder
STYLES = {"thinking": "dim italic", "answer": ""}  # of the reply's text on a terminal
HELP = ("/history on|off keeps or drops the conversation, /reset clears it, /temp T, /top_p P, "
        "/max N change sampling, /exit (or Ctrl-D) quits")
SINGLE_TURN = ("(single-turn: each question is asked on its own, like a training prompt; "
               "--history or /history on keeps the conversation)")
MULTI_TURN = ("(multi-turn: earlier questions and replies are sent with each question; "
              "/history off asks each on its own, as the model was trained)")


def engine_for(model, cfg=None):
    """The generation engine chat streams from: `make_engine` with the run's config `cfg`, or the
    default config's when the model comes from no run."""
    from zeroth.config import Config
    from zeroth.rollout import make_engine

    return make_engine(cfg if cfg is not None else Config(), model)


# ---------------------------------------------------------------------------------------------
# Output: labels and styles on a terminal, plain labelled text otherwise.
# ---------------------------------------------------------------------------------------------


class Renderer:
    """Prints streamed replies. On a terminal (rich): a dim "thinking" label with the reasoning
    dim and italic, then a bold "answer" label; elsewhere `[thinking]` / `[answer]` lines and
    plain text. `raw` prints the completion as written, without labels."""

    def __init__(self, out=None, raw: bool = False, styled: bool | None = None):
        from rich.console import Console

        self.out = out if out is not None else sys.stdout
        self.console = Console(file=self.out, highlight=False, soft_wrap=True,
                               force_terminal=styled)
        self.styled = self.console.is_terminal
        self.raw = raw
        self.kind, self.col0, self.shown = None, True, False
        self.splitter = ReasoningSplitter()

    def write(self, text: str, style: str = "") -> None:
        if not text:
            return
        if self.styled:
            self.console.print(text, style=style or None, end="", markup=False, emoji=False)
        else:
            self.out.write(text)
        self.col0 = text.endswith("\n")
        self.out.flush()

    def line(self, text: str, style: str = "dim") -> None:
        """A line of its own (notes, stats)."""
        if not self.col0:
            self.write("\n")
        self.write(text + "\n", style)

    def start(self, thinking: bool = False) -> None:
        """A new reply; `thinking`: its prompt opened a think block."""
        self.kind, self.shown = None, False
        self.splitter = ReasoningSplitter(thinking)

    def feed(self, text: str) -> None:
        """The next streamed piece of the reply."""
        if self.raw:
            self.write(text)
            self.shown = self.shown or bool(text)
            return
        for kind, part in self.splitter.feed(text):
            self.piece(kind, part)

    def piece(self, kind: str, text: str) -> None:
        if kind != self.kind:
            text = text.lstrip()  # a section starts at its first visible character
            if not text:
                return
            label = f"[{kind}]" if not self.styled else kind
            self.line(label, "bold" if kind == "answer" else "dim bold")
            self.kind = kind
        self.write(text, STYLES[kind] if self.styled else "")
        self.shown = True

    def end(self, n_tokens: int, seconds: float, interrupted: bool = False) -> None:
        """The reply is over: what the splitter held back, then the token count and rate."""
        for kind, part in self.splitter.flush():
            self.piece(kind, part)
        rate = n_tokens / seconds if seconds > 0 else 0.0
        note = " — interrupted" if interrupted else ""
        if not self.shown:
            self.line("(empty reply)")
        self.line(f"[{n_tokens} tokens, {rate:.1f} tokens/s{note}]")


# ---------------------------------------------------------------------------------------------
# The conversation.
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    system: str | None = None


class Chat:
    """A conversation with one model: its sampling settings and random stream, the engine that
    samples it (default: `engine_for(model)`), and its history when `history` is on (off by
    default: each question alone, as in training)."""

    def __init__(self, model, tokenizer, settings: Settings, generator=None,
                 history: bool = False, engine=None):
        from zeroth.rollout.decoder import stop_ids

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.engine = engine if engine is not None else engine_for(model)
        self.generator, self.history = generator, False
        self.stops = stop_ids(model, tokenizer)
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.turns: list[dict] = []
        self.set_history(history)

    def set_history(self, on: bool) -> None:
        """Keep the conversation (on) or ask each question alone (off: history forgotten)."""
        if on and not supports_history(self.tokenizer):
            raise UserError("this model's chat template holds one turn only, so questions "
                            "cannot carry history — chat without --history")
        self.history = on
        if not on:
            self.turns = []

    def messages(self, question: str) -> list[dict]:
        """The conversation to send for `question` (history and system prompt included)."""
        system = [{"role": "system", "content": self.settings.system}] \
            if self.settings.system else []
        earlier = self.turns if self.history else []
        return system + earlier + [{"role": "user", "content": question}]

    def prompt(self, question: str, renderer: Renderer) -> list[int]:
        """Prompt ids for `question`; the oldest exchanges are dropped while the prompt and the
        reply would not fit the model's context (a single question is asked whatever its length:
        training prompts may pass the context too)."""
        ids = chat_ids(self.tokenizer, self.messages(question))
        while self.context and self.turns and \
                len(ids) + self.settings.max_new_tokens > self.context:
            self.turns = self.turns[2:]
            renderer.line("(oldest exchange dropped to fit the model's context of "
                          f"{self.context} tokens)")
            ids = chat_ids(self.tokenizer, self.messages(question))
        return ids

    def ask(self, question: str, renderer: Renderer) -> str:
        """Stream the reply to `question` into `renderer`; returns the reply text. Ctrl-C stops
        the reply (it is then left out of the history)."""
        ids = self.prompt(question, renderer)
        tokens = self.engine.stream(ids, max_new_tokens=self.settings.max_new_tokens,
                                    temperature=self.settings.temperature,
                                    top_p=self.settings.top_p, generator=self.generator,
                                    eos_id=self.stops)
        sampled: list[int] = []
        renderer.start(thinking=opens_thinking(self.tokenizer, ids))
        t0, parts, interrupted = time.perf_counter(), [], False
        try:
            for piece in stream_text(self.tokenizer, tokens, self.stops, sampled=sampled):
                parts.append(piece)
                renderer.feed(piece)
        except KeyboardInterrupt:
            interrupted = True
        renderer.end(len(sampled), time.perf_counter() - t0, interrupted)
        reply = "".join(parts)
        if self.history and not interrupted:
            self.turns += [{"role": "user", "content": question},
                           {"role": "assistant", "content": reply}]
        return reply

    def reset(self) -> None:
        self.turns = []


# ---------------------------------------------------------------------------------------------
# Finding and loading the model; the command.
# ---------------------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("chat", help="talk to a run's model (or a model folder) in the "
                              "terminal, reasoning shown apart from the answer")
    p.add_argument("source", help="runs/<name>, a checkpoint or a model folder")
    p.add_argument("--checkpoint", metavar="TAG", help="a run's checkpoints/TAG instead of its "
                   "final model (e.g. rl-000004)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="reply length limit "
                   "(default: the run's eval.max_new_tokens, else 512)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature, 0 = "
                   "greedy (default: the run's eval.temperature, else 0.7)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (default 1.0)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the sampling (default: random)")
    p.add_argument("--system", metavar="TEXT", help="a system message before the conversation")
    p.add_argument("--history", action="store_true", help="send the conversation so far with each "
                   "question (default: each question alone, formatted like a training prompt)")
    p.add_argument("--raw", action="store_true", help="print completions as written (tags "
                   "included), without thinking/answer labels")
    return p


def run_dir_of(path: Path) -> Path | None:
    """The run directory `path` belongs to: a run itself, its final/ model, one of its
    checkpoints or a checkpoint's model/; None for a model folder outside a run."""
    path = path.resolve()
    candidates = [path]
    if path.name == "final":
        candidates.append(path.parent)
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    if path.name == "model" and path.parent.parent.name == "checkpoints":
        candidates.append(path.parent.parent.parent)
    return next((c for c in candidates if (c / "config.yaml").is_file()), None)


def model_folder(source: str, tag: str | None) -> Path:
    """The model folder behind SOURCE (and --checkpoint TAG)."""
    from zeroth.models.locate import model_dir
    from zeroth.pipeline.export import resolve_source

    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"chat source '{source}' does not exist — give runs/<name>, a checkpoint "
                        "or a model folder")
    if tag is None:
        return resolve_source(path)
    root = path / "checkpoints"
    if not root.is_dir():
        raise UserError(f"--checkpoint needs a run directory, and '{source}' has no checkpoints/")
    from zeroth.cli.eval import checkpoint_tags

    tags = checkpoint_tags(path)
    if tag not in tags:
        known = ", ".join(tags) if tags else "none yet"
        raise UserError(f"run '{source}' has no checkpoint {tag!r} — available: {known}")
    return model_dir(root / tag)


def run_config(folder: Path):
    """The config of the run `folder` belongs to, None outside a run."""
    run_dir = run_dir_of(folder)
    if run_dir is None:
        return None
    from zeroth.config import load_run_config

    return load_run_config(run_dir)


def settings_for(ns, cfg) -> Settings:
    """Command-line values, else the eval section of the run's config `cfg` (None outside a
    run), else DEFAULTS."""
    base = dict(DEFAULTS)
    if cfg is not None:
        base.update(temperature=cfg.eval.temperature, max_new_tokens=cfg.eval.max_new_tokens)
    chosen = {"temperature": ns.temperature, "max_new_tokens": ns.max_new_tokens,
              "top_p": ns.top_p}
    base.update({k: v for k, v in chosen.items() if v is not None})
    settings = Settings(system=ns.system, **base)
    check_settings(settings)
    return settings


OPTIONS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
           "top_p": "--top-p"}  # the name of each setting in messages
COMMANDS = {"max_new_tokens": "the reply length", "temperature": "the temperature",
            "top_p": "top-p"}  # in messages of the in-session commands


def check_settings(s: Settings, names: dict[str, str] = OPTIONS) -> None:
    """UserError for a setting out of range; `names` says how each is called in the message."""
    if s.max_new_tokens < 1:
        raise UserError(f"{names['max_new_tokens']} must be at least 1, got {s.max_new_tokens}")
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise UserError(f"{names['temperature']} must be a finite number >= 0 (0 = greedy), "
                        f"got {s.temperature}")
    if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise UserError(f"{names['top_p']} must be in (0, 1], got {s.top_p}")


def open_chat(ns, renderer: Renderer) -> Chat:
    import torch

    from zeroth.models import hf as models
    from zeroth.models.precision import set_precision

    folder = model_folder(ns.source, ns.checkpoint)
    cfg = run_config(folder)
    settings = settings_for(ns, cfg)
    # template "auto": the tokenizer saved with a run's model carries the template it trained with
    model, tokenizer = models.load_model(folder, dtype="auto", template="auto")
    model = model.to(models.pick_device("auto")).eval()
    set_precision(model, cfg.model.precision if cfg is not None else "auto")  # as it trained
    generator = torch.Generator()
    if ns.seed is None:
        generator.seed()
    else:
        generator.manual_seed(ns.seed)
    chat = Chat(model, tokenizer, settings, generator, history=ns.history,
                engine=engine_for(model, cfg))
    renderer.line(f"chatting with {folder} (temperature {settings.temperature}, top-p "
                  f"{settings.top_p}, at most {settings.max_new_tokens} new tokens) — {HELP}")
    renderer.line(MULTI_TURN if chat.history else SINGLE_TURN)
    return chat


def command(line: str, chat: Chat, renderer: Renderer) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = line.partition(" ")
    fields = {"/temp": ("temperature", float), "/top_p": ("top_p", float),
              "/max": ("max_new_tokens", int)}
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        chat.reset()
        renderer.line("(conversation cleared)")
    elif name == "/history":
        history_command(arg.strip(), chat, renderer)
    elif name in fields:
        key, kind = fields[name]
        old = getattr(chat.settings, key)
        try:
            setattr(chat.settings, key, kind(arg))
            check_settings(chat.settings, COMMANDS)
            renderer.line(f"({key} = {getattr(chat.settings, key)})")
        except (ValueError, UserError) as exc:
            setattr(chat.settings, key, old)
            renderer.line(f"({name} {arg}: {exc})")
    else:
        renderer.line(HELP)
    return True


def history_command(arg: str, chat: Chat, renderer: Renderer) -> None:
    """/history on|off (bare: say which mode is on)."""
    if arg not in ("", "on", "off"):
        renderer.line(f"(/history {arg}: say /history on or /history off)")
        return
    if arg:
        try:
            chat.set_history(arg == "on")
        except UserError as exc:
            renderer.line(f"(/history on: {exc})")
            return
    renderer.line(MULTI_TURN if chat.history else SINGLE_TURN)


def read_line(stdin, renderer: Renderer) -> str | None:
    """The next line, None at end of input; a prompt is shown on a terminal."""
    if stdin.isatty() and stdin is sys.stdin:
        try:
            return input("\nyou> ")
        except EOFError:
            return None
    line = stdin.readline()
    return line if line else None


def loop(chat: Chat, renderer: Renderer, stdin=None) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    while True:
        try:
            line = read_line(stdin, renderer)
        except KeyboardInterrupt:
            renderer.line("")
            return 0
        if line is None:
            return 0
        line = line.strip()
        if line.startswith("/"):
            if not command(line, chat, renderer):
                return 0
        elif line:
            try:
                chat.ask(line, renderer)
            except KeyboardInterrupt:  # before the first token: nothing was said
                renderer.line("(interrupted)")


def run(ns) -> int:
    renderer = Renderer(raw=ns.raw)
    try:
        chat = open_chat(ns, renderer)
    except KeyboardInterrupt:
        print("zeroth: interrupted while loading the model", file=sys.stderr)
        return 130
    return loop(chat, renderer)
