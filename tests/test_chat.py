"""`zeroth chat`: the streamed think/answer split, streaming generation, prompts, the CLI."""

from __future__ import annotations

import copy
import io
import shutil
import sys
from dataclasses import replace

import pytest
import torch

from zeroth import rollout
from zeroth.cli import chat, main
from zeroth.cli.chat import ReasoningSplitter
from zeroth.config import load_run_config
from zeroth.errors import UserError
from zeroth.record.thoughts import split_reasoning
from zeroth.rollout import reply
from zeroth.rollout.torch_engine import TorchEngine

# ---------------------------------------------------------------------------------------------
# The incremental splitter, on hand-made streams.
# ---------------------------------------------------------------------------------------------


def split_stream(pieces, thinking=False):
    splitter = ReasoningSplitter(thinking=thinking)
    out = [p for text in pieces for p in splitter.feed(text)] + splitter.flush()
    joined = {"thinking": "", "answer": ""}
    for kind, text in out:
        joined[kind] += text
    return out, joined


WELL_FORMED = "<think>2+2 is 4, wait: let me check. 2 < 3</think> <answer>4</answer>"


def test_splitter_matches_split_reasoning_whatever_the_cuts():
    reasoning, answer = split_reasoning(WELL_FORMED)
    for i in range(len(WELL_FORMED) + 1):  # every cut in two, tags split everywhere
        for j in range(i, len(WELL_FORMED) + 1, 7):
            pieces = [WELL_FORMED[:i], WELL_FORMED[i:j], WELL_FORMED[j:]]
            _, joined = split_stream(pieces)
            assert joined["thinking"].strip() == reasoning
            assert joined["answer"].strip() == answer
    out, _ = split_stream(list(WELL_FORMED))  # one character at a time
    assert [kind for kind, _ in reply._merge(out)] == ["thinking", "answer"]


def test_splitter_holds_a_possible_tag_until_it_is_unambiguous():
    splitter = ReasoningSplitter()
    assert splitter.feed("so <th") == [("answer", "so ")]  # "<th" may become "<think>"
    assert splitter.feed("in") == []
    assert splitter.feed("k>hm") == [("thinking", "hm")]
    assert splitter.feed("</thi") == []
    assert splitter.feed("nking") == [("thinking", "</thinking")]  # not a tag after all
    assert splitter.feed("</") == []
    assert splitter.feed("think>ok") == [("answer", "ok")]
    assert splitter.feed(" a <") == [("answer", " a ")]
    assert splitter.feed(" b") == [("answer", "< b")]  # a lone "<" is text


def test_splitter_without_tags_is_all_answer():
    text = "x<y and 3 > 2, <b>bold</b> <"
    out, joined = split_stream(list(text))
    assert joined == {"thinking": "", "answer": text}
    assert {kind for kind, _ in out} == {"answer"}


def test_splitter_unclosed_blocks_and_stray_tags():
    _, joined = split_stream(["<think>still thinking when", " the tokens ran out <an"])
    assert joined == {"thinking": "still thinking when the tokens ran out <an", "answer": ""}
    _, joined = split_stream(["<answer>4"])  # an answer without its closing tag
    assert joined == {"thinking": "", "answer": "4"}
    _, joined = split_stream(["</think>5</answer>"])  # stray closing tags are dropped
    assert joined == {"thinking": "", "answer": "5"}
    # a prompt that opened the think block: the completion starts inside it
    _, joined = split_stream(["because", "</think>", "<answer>7</answer>"], thinking=True)
    assert joined == {"thinking": "because", "answer": "7"}


def test_splitter_merges_and_drops_empty_pieces():
    splitter = ReasoningSplitter()
    assert splitter.feed("") == []
    assert splitter.feed("<think></think><answer></answer>") == []
    assert splitter.feed("a<b") == [("answer", "a<b")]
    assert splitter.flush() == []


# ---------------------------------------------------------------------------------------------
# A real tiny run, its model, streaming generation.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(finished_tiny_run):
    """The session's finished tiny run, only read here."""
    return finished_tiny_run


def checkpoints(run_dir):
    """The run's checkpoint tags, in training order."""
    from zeroth.cli.eval import checkpoint_tags

    tags = checkpoint_tags(run_dir)
    assert tags
    return tags


@pytest.fixture(scope="module")
def loaded(run_dir):
    from zeroth.models.hf import load_model

    model, tokenizer = load_model(run_dir / "final", dtype="auto")
    return model.eval(), tokenizer


def ask(question):
    return [{"role": "user", "content": question}]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_reply_arrives_in_pieces_and_equals_generate(loaded, seed):
    from zeroth.rollout.decoder import generate, stop_ids

    model, tokenizer = loaded
    stops = stop_ids(model, tokenizer)
    sampled = []
    pieces = list(reply.stream_reply(chat.engine_for(model), tokenizer, ask("What is 12+34?"), max_new_tokens=40,
                                    temperature=1.0, generator=torch.Generator().manual_seed(seed),
                                    sampled=sampled))
    full = generate(model, [reply.chat_ids(tokenizer, ask("What is 12+34?"))],
                    max_new_tokens=40, temperature=1.0, eos_id=stops,
                    generator=torch.Generator().manual_seed(seed), pad_id=tokenizer.pad_token_id)[0]
    assert len(pieces) > 1
    assert all(pieces) and not any(p.endswith("\ufffd") for p in pieces[:-1])
    assert "".join(pieces) == reply.reply_text(tokenizer, full, stops)
    assert sampled == full[:len(sampled)]  # stopped early only at </answer>
    if len(sampled) < len(full):
        assert "".join(pieces).endswith(reply.STOP_TEXT)


def test_greedy_and_tiny_top_p_agree(loaded):
    from zeroth.rollout.decoder import generate, stop_ids

    model, tokenizer = loaded
    stops = stop_ids(model, tokenizer)
    prompt = reply.chat_ids(tokenizer, ask("What is 5+6?"))
    engine = chat.engine_for(model)
    greedy = list(engine.stream(prompt, max_new_tokens=12, temperature=0.0, top_p=1.0,
                                generator=None, eos_id=stops))
    nucleus = list(engine.stream(prompt, max_new_tokens=12, temperature=1.0, top_p=1e-6,
                                 generator=torch.Generator().manual_seed(3), eos_id=stops))
    reference = generate(model, [prompt], max_new_tokens=12, greedy=True, eos_id=stops,
                         pad_id=tokenizer.pad_token_id)[0]
    assert greedy == nucleus == reference


def test_engine_stream_yields_the_stop_token_last(loaded):
    model, tokenizer = loaded
    prompt = reply.chat_ids(tokenizer, ask("What is 1+1?"))
    every = set(range(len(tokenizer)))
    assert len(list(chat.engine_for(model).stream(prompt, max_new_tokens=9, temperature=1.0,
                                                  top_p=1.0, generator=None,
                                                  eos_id=every))) == 1


def test_stream_text_waits_for_whole_characters_and_stops(loaded):
    _, tokenizer = loaded
    text = "<think>é 漢字</think><answer>4</answer> never shown"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # the multi-byte characters take several tokens: some prefixes end inside one
    assert any(tokenizer.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids)))
    pieces = list(reply.stream_text(tokenizer, iter(ids)))
    assert "".join(pieces) == "<think>é 漢字</think><answer>4</answer>"
    assert not any("\ufffd" in p for p in pieces)
    eos = tokenizer.eos_token_id
    seen = []
    pieces = list(reply.stream_text(tokenizer, iter(ids[:3] + [eos] + ids[3:]), {eos},
                                   sampled=seen))
    assert "".join(pieces) == tokenizer.decode(ids[:3]) and seen == ids[:3] + [eos]


class CountingTokenizer:
    """A tokenizer that records how many ids each decode call is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.sizes = tokenizer, []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_stream_text_decodes_a_short_window_per_token(loaded):
    _, tokenizer = loaded
    text = "<think>" + " ".join(f"{i}+{i} é 漢 <b" for i in range(60)) + "</think><answer>7</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 400
    counting = CountingTokenizer(tokenizer)
    pieces = list(reply.stream_text(counting, iter(ids + ids)))
    assert "".join(pieces) == text and len(pieces) > 100  # cut after the first </answer>
    assert not any("\ufffd" in p for p in pieces)
    assert max(counting.sizes) <= 2 * reply.MAX_PENDING  # never the whole reply
    assert len(counting.sizes) <= 2 * len(ids) + 2


def test_stream_text_joins_to_the_decoded_reply_however_it_ends(loaded):
    _, tokenizer = loaded
    text = "a é 漢字 </ans wer> </answ"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for n in range(len(ids) + 1):  # cut inside characters, inside a would-be stop text
        assert "".join(reply.stream_text(tokenizer, iter(ids[:n]))) == \
            reply.reply_text(tokenizer, ids[:n])
    stop = tokenizer("</answer>", add_special_tokens=False)["input_ids"]
    assert "".join(reply.stream_text(tokenizer, iter(ids + stop + ids))) == text + "</answer>"
    # a byte that never makes a character (a lead byte again and again) is shown after a while
    lead = [t for t in ids if tokenizer.decode([t]) == "\ufffd"][:1]
    assert lead
    broken = lead * (3 * reply.MAX_PENDING)
    pieces = list(reply.stream_text(tokenizer, iter(broken + ids)))
    assert pieces[0].startswith("\ufffd" * reply.MAX_PENDING)
    assert "".join(pieces) == reply.reply_text(tokenizer, broken + ids)


# ---------------------------------------------------------------------------------------------
# Prompts: training format, history, context.
# ---------------------------------------------------------------------------------------------


def capture():
    """A Renderer writing plain text into a string."""
    return chat.Renderer(out=io.StringIO(), styled=False)


def test_by_default_every_question_is_a_training_prompt(loaded):
    from zeroth.models.hf import prompt_ids

    model, tokenizer = loaded
    session = chat.Chat(model, tokenizer, chat.Settings(max_new_tokens=6, temperature=1.0),
                        torch.Generator().manual_seed(0))
    assert not session.history
    renderer = capture()
    for question in ("What is 1+2?", "And 3+4?"):
        assert session.prompt(question, renderer) == prompt_ids(tokenizer, [question])[0]
        session.ask(question, renderer)
        assert session.turns == [] and session.messages("x") == ask("x")


def test_with_history_the_conversation_follows(loaded):
    from zeroth.models.hf import prompt_ids

    model, tokenizer = loaded
    assert reply.supports_history(tokenizer)
    session = chat.Chat(model, tokenizer, chat.Settings(max_new_tokens=6, temperature=1.0),
                        torch.Generator().manual_seed(0), history=True)
    renderer = capture()
    first = session.prompt("What is 1+2?", renderer)
    assert first == prompt_ids(tokenizer, ["What is 1+2?"])[0]
    answer = session.ask("What is 1+2?", renderer)
    assert session.turns == [{"role": "user", "content": "What is 1+2?"},
                             {"role": "assistant", "content": answer}]
    second = session.prompt("And 3+4?", renderer)
    rendered = tokenizer.decode(second, skip_special_tokens=False)
    assert second[:len(first)] == first
    assert rendered.index("What is 1+2?") < rendered.index("And 3+4?")
    assert rendered.endswith("<|user|>And 3+4?<|end|><|assistant|>")
    session.reset()
    assert session.prompt("And 3+4?", renderer) == prompt_ids(tokenizer, ["And 3+4?"])[0]
    session.ask("And 3+4?", renderer)
    assert len(session.turns) == 2
    session.set_history(False)  # off: the conversation is forgotten, questions go alone
    assert session.turns == [] and session.prompt("hi", renderer) == prompt_ids(tokenizer, ["hi"])[0]


def test_system_prompt_and_single_turn_templates(loaded):
    model, tokenizer = loaded
    session = chat.Chat(model, tokenizer, chat.Settings(6, 1.0, system="Be brief."))
    text = tokenizer.decode(session.prompt("hi", capture()), skip_special_tokens=False)
    assert text.startswith("<|bos|><|system|>Be brief.<|end|><|user|>hi")
    single = copy.deepcopy(tokenizer)
    single.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}"
                            "{{ raise_exception('one turn only') }}{% endif %}"
                            "{{ m['content'] }}{% endfor %}")
    assert not reply.supports_history(single)
    with pytest.raises(UserError, match="holds one turn only"):
        chat.Chat(model, single, chat.Settings(4, 1.0), history=True)
    session = chat.Chat(model, single, chat.Settings(4, 1.0))
    session.ask("first", capture())
    assert session.turns == [] and session.messages("second") == ask("second")
    with pytest.raises(UserError, match="holds one turn only"):
        session.set_history(True)
    assert not session.history


def test_old_exchanges_are_dropped_to_fit_the_context(loaded):
    model, tokenizer = loaded
    session = chat.Chat(model, tokenizer, chat.Settings(max_new_tokens=20, temperature=1.0),
                        history=True)
    session.turns = [{"role": "user", "content": "What is 10+20?"},
                     {"role": "assistant", "content": "<answer>30</answer>"}] * 3
    renderer = capture()
    ids = session.prompt("What is 2+2?", renderer)
    assert len(ids) + 20 <= model.config.max_position_embeddings
    assert "oldest exchange dropped" in renderer.out.getvalue()
    assert len(session.turns) < 6


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def render(pieces, raw=False, styled=False):
    renderer = chat.Renderer(out=io.StringIO(), raw=raw, styled=styled)
    renderer.start()
    for piece in pieces:
        renderer.feed(piece)
    renderer.end(5, 0.5)
    return renderer.out.getvalue()


def test_plain_output_has_labels_and_stats():
    text = render(["<think>\nadd the ", "units</thi", "nk>\n<answer>", "4</answer>"])
    assert text == "[thinking]\nadd the units\n[answer]\n4\n[5 tokens, 10.0 tokens/s]\n"
    assert render(["<answer>", "</answer>"]).startswith("(empty reply)\n")
    assert render(["<think>a</think>", "<answer>4</answer>"], raw=True).startswith(
        "<think>a</think><answer>4</answer>\n")


def test_terminal_output_is_styled():
    text = render(["<think>hm</think><answer>4</answer>"], styled=True)
    assert "thinking" in text and "answer" in text and "[thinking]" not in text
    assert "\x1b[2;3m" in text or ("\x1b[2m" in text and "\x1b[3m" in text)  # dim italic


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def chat_cli(monkeypatch, capsys, args, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["chat", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("history", [False, True])
def test_cli_chats_over_piped_stdin(run_dir, loaded, monkeypatch, capsys, history):
    flags = ["--history"] if history else []
    code, out, err = chat_cli(monkeypatch, capsys, [run_dir, "--max-new-tokens", "8",
                                                    "--seed", "0", *flags],
                              "What is 1+2?\n\nWhat is 3+4?\n")
    assert code == 0, err
    banner, mode, *lines = out.splitlines()
    assert banner.startswith(f"chatting with {run_dir / 'final'} (temperature 1.0")
    assert mode == (chat.MULTI_TURN if history else chat.SINGLE_TURN)
    assert sum("tokens/s]" in line for line in lines) == 2
    # the same two seeded replies through the API (the second question alone, or after the
    # first exchange), rendered with the same labels
    model, tokenizer = loaded
    generator, turns, expected = torch.Generator().manual_seed(0), [], capture()
    for question in ("What is 1+2?", "What is 3+4?"):
        turns = turns if history else []
        turns.append({"role": "user", "content": question})
        expected.start()
        pieces = list(reply.stream_reply(chat.engine_for(model), tokenizer, turns, max_new_tokens=8,
                                        temperature=1.0, generator=generator))
        for piece in pieces:
            expected.feed(piece)
        expected.end(8, 1.0)
        turns.append({"role": "assistant", "content": "".join(pieces)})
    want = expected.out.getvalue().splitlines()
    assert [x for x in lines if "tokens/s]" not in x] == [x for x in want if "tokens/s]" not in x]
    assert any(x in ("[answer]", "[thinking]", "(empty reply)") for x in lines)


def scripted(tokenizer, text):
    """A stand-in for the engine's stream that 'generates' `text` token by token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def fake(engine, prompt, **kwargs):
        yield from ids[:kwargs["max_new_tokens"]]
    return fake


def test_cli_labels_reasoning_and_answer(run_dir, loaded, monkeypatch, capsys):
    monkeypatch.setattr(TorchEngine, "stream",
                        scripted(loaded[1], "<think>3 plus 4</think> <answer>7</answer>"))
    tag = checkpoints(run_dir)[0]
    code, out, _ = chat_cli(monkeypatch, capsys, [run_dir, "--checkpoint", tag],
                            "What is 3+4?\n/temp 0.3\n/temp x\n/temp nan\n/temp inf\n"
                            "/top_p nan\n/history on\n/history\n/history maybe\n/history off\n"
                            "/reset\n/exit\nnever asked\n")
    assert code == 0
    lines = out.splitlines()
    assert f"checkpoints/{tag}/model" in lines[0] and lines[1] == chat.SINGLE_TURN
    assert "[thinking]\n3 plus 4\n[answer]\n7\n[" in out
    assert "(temperature = 0.3)" in out and "/temp x:" in out and "(conversation cleared)" in out
    for bad in ("/temp nan", "/temp inf", "/top_p nan"):
        assert any(x.startswith(f"({bad}: ") and "must be" in x for x in lines)
    assert "(temperature = nan)" not in out and "(temperature = inf)" not in out
    assert lines.count(chat.MULTI_TURN) == 2 and lines.count(chat.SINGLE_TURN) == 2
    assert "(/history maybe: say /history on or /history off)" in lines
    assert out.count("tokens/s]") == 1


def test_chat_streams_from_the_engine_the_run_config_names(run_dir, loaded, monkeypatch,
                                                           capsys):
    made = []

    class Scripted(TorchEngine):
        stream = scripted(loaded[1], "<think>3 plus 4</think> <answer>7</answer>")

        def __init__(self, model, cfg=None):
            super().__init__(model, cfg)
            made.append(self)

    monkeypatch.setitem(rollout.ENGINES, "scripted", Scripted)
    cfg = load_run_config(run_dir)  # the run's config, naming the scripted engine
    cfg = replace(cfg, rl=replace(cfg.rl, engine="scripted"))
    monkeypatch.setattr(chat, "run_config", lambda folder: cfg)
    code, out, _ = chat_cli(monkeypatch, capsys, [run_dir], "What is 3+4?\n")
    assert code == 0 and len(made) == 1 and "[answer]\n7\n" in out


def test_ctrl_c_stops_a_reply_and_quits_at_the_prompt(run_dir, loaded, monkeypatch, capsys):
    calls = []

    def interrupted(engine, prompt, **kwargs):
        calls.append(1)
        yield from loaded[1]("<think>a b c", add_special_tokens=False)["input_ids"]
        if len(calls) == 1:
            raise KeyboardInterrupt
        yield loaded[1].eos_token_id

    monkeypatch.setattr(TorchEngine, "stream", interrupted)
    code, out, _ = chat_cli(monkeypatch, capsys, [run_dir], "first\nsecond\n")
    assert code == 0 and len(calls) == 2
    assert "interrupted]" in out.split("[thinking]")[1] and out.count("tokens/s") == 2

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", CtrlC())
    assert main(["chat", str(run_dir)]) == 0


def test_history_needs_a_template_that_holds_turns(run_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "one_turn"
    shutil.copytree(run_dir / "final", folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ raise_exception('one turn only') }}{% endif %}{{ m['content'] }}{% endfor %}")
    code, out, err = chat_cli(monkeypatch, capsys, [folder, "--history"], "never read\n")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("zeroth: error: ") and "holds one turn only" in err
    code, out, err = chat_cli(monkeypatch, capsys, [folder], "/history on\n/exit\n")
    assert code == 0, err
    assert out.splitlines()[1] == chat.SINGLE_TURN
    assert "(/history on: this model's chat template holds one turn only" in out


def test_defaults_come_from_the_run(run_dir, tmp_path):
    from zeroth.cli import parser

    ns = parser().parse_args(["chat", "x"])
    ckpt = run_dir / "checkpoints" / checkpoints(run_dir)[0] / "model"
    for folder in (run_dir / "final", ckpt):
        settings = chat.settings_for(ns, chat.run_config(folder))
        assert (settings.temperature, settings.max_new_tokens) == (1.0, 16)
    outside = tmp_path / "model"
    outside.mkdir()
    settings = chat.settings_for(ns, chat.run_config(outside))
    assert (settings.temperature, settings.max_new_tokens, settings.top_p) == (0.7, 512, 1.0)
    ns = parser().parse_args(["chat", "x", "--temperature", "0", "--max-new-tokens", "3"])
    settings = chat.settings_for(ns, chat.run_config(run_dir / "final"))
    assert (settings.temperature, settings.max_new_tokens) == (0.0, 3)


def test_a_checkpoint_or_model_folder_is_a_source(run_dir):
    ckpt = run_dir / "checkpoints" / checkpoints(run_dir)[0]
    assert chat.model_folder(str(ckpt), None) == ckpt / "model"
    assert chat.model_folder(str(run_dir / "final"), None) == run_dir / "final"
    assert chat.model_folder(str(run_dir), None) == run_dir / "final"


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}/empty_run"], "no final model and no checkpoint yet"),
    (["{run}", "--checkpoint", "rl-000009"], "available: {tags}"),
    (["{run}/final", "--checkpoint", "rl-000004"], "--checkpoint needs a run directory"),
    (["{run}", "--checkpoint", "../final"], "has no checkpoint '../final'"),
    (["{run}", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["{run}", "--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
    (["{run}", "--top-p", "inf"], "--top-p must be in (0, 1], got inf"),
    (["{run}", "--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["{run}", "--temperature", "inf"], "--temperature must be a finite number >= 0"),
    (["{run}", "--temperature=-inf"], "--temperature must be a finite number >= 0"),
    (["{run}", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["{tmp}/not_a_model"], "no config.json"),
])
def test_errors_are_one_line(run_dir, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.yaml").write_text("run: {}\n")
    (tmp_path / "not_a_model").mkdir()
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    message = message.format(tags=", ".join(checkpoints(run_dir)))
    code, out, err = chat_cli(monkeypatch, capsys, args, "never read\n")
    assert code == 2 and out == ""
    assert err.startswith("zeroth: error: ") and message in err and err.count("\n") == 1
