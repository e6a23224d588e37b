"""The `zeroth view` page in a real browser: Debian's headless chromium driven by playwright.

The server runs in a thread on a free port over the session's real tiny run (`runs/t`, from
conftest.py's `finished_tiny_run`, read only), a small synthetic run with readable completions
(`synth`) and a run whose ledger is not a database (`broken`), and the tests act as a person
would: read the curves, the evaluation table, filter and page the rollouts, open a group, and
watch a run that is still writing. The server sends a strict Content-Security-Policy, so a
console error here also catches page code the policy blocks. ZEROTH_SCREENSHOTS=DIR saves
screenshots of the page there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from zeroth.pipeline.ledger import Ledger
from zeroth.record.thoughts import split_reasoning

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
POLL_MS = 300
REASONING = "Add {a} and {b}. Wait, let me check the carry: it is {c}."


# -- fixtures -----------------------------------------------------------------------------------


def _rollout(step: int, p: int, s: int) -> dict:
    a, b = 10 + p, 20 + step
    right = s % 2 == 0
    answer = str(a + b if right else a + b + 1)
    return {"prompt_idx": p, "sample_idx": s, "prompt": f"What is {a}+{b}?",
            "completion": f"<think>{REASONING.format(a=a, b=b, c=answer)}</think>"
                          f"<answer>{answer}</answer>",
            "n_tokens": 20 + s, "rewards": {"correct": float(right), "format": 0.1},
            "reward": float(right) + 0.1, "advantage": 1.0 if right else -1.0,
            "answer": str(a + b), "task": "addition", "difficulty": str(1 + p)}


def _synthetic_run(path: Path) -> Path:
    """A run with clean text: 3 RL steps x 2 prompts x 2 samples (step 3 prompt 0 sample 1 has
    a NaN and an unscored reward component), two rejection samples, two evals, levels."""
    ledger = Ledger(path / "ledger.sqlite")
    for phase, acc in (("eval_start", 0.25), ("eval_rl", 0.75)):
        ledger.log_eval(phase, [{"problem_idx": i, "sample_idx": -1, "prompt": f"What is {i}+1?",
                                 "completion": f"<think>{i} plus one</think><answer>{i + 1}</answer>",
                                 "n_tokens": 9, "correct": i < acc * 4, "answer": str(i + 1)}
                                for i in range(4)])
        ledger.log_metrics(phase, 0, {"pass@1": acc, "greedy": acc, "mean_len": 30.0,
                                      "problems": 4, "k": 1})
        ledger.set_meta(f"{phase}_by_difficulty", {"1": {"problems": 2, "pass@1": acc},
                                                   "2": {"problems": 2, "pass@1": acc / 2}})
    for step in (1, 2, 3):
        ledger.log_metrics("rl", step, {"reward": 0.2 * step, "reward_correct": 0.1 * step,
                                        "reward_format": 0.1, "kl": 0.01 * step,
                                        "mean_len": 20.0 + step})
        rows = [_rollout(step, p, s) for p in range(2) for s in range(2)]
        if step == 3:
            rows[1]["rewards"] = {"correct": float("nan"), "format": None}
        ledger.log_rollouts("rl", step, rows)
    ledger.log_rollouts("rejection", 3, [_rollout(3, 1, s) for s in range(2)])
    ledger.close()
    _saved_evals(path)
    return path


SAVED = {1: (0.25, 0.5), 2: (0.5, 0.75)}  # checkpoint step: (pass@1, greedy)


def _saved_evals(run: Path) -> None:
    """What `zeroth eval --checkpoint all` writes for checkpoints rl-000001 and rl-000002 (the
    second with difficulty levels), and a results file cut short."""
    (run / "evals").mkdir()
    for step, (pass1, greedy) in SAVED.items():
        tag = f"rl-{step:06d}"
        levels = {"1": {"problems": 2, "pass@1": 1.0}, "2": {"problems": 2, "pass@1": 0.0}}
        data = {"source": "zeroth eval", "task": "addition", "k": 2, "problems": 4,
                "checkpoint": {"tag": tag, "stage": "rl", "stage_index": 0, "step": step},
                "metrics": {"pass1": pass1, "pass@1": pass1, "pass@2": pass1, "maj@2": pass1,
                            "greedy": greedy, "mean_len": 12.0, "problems": 4, "k": 2},
                "by_difficulty": levels if step == 2 else None}
        (run / "evals" / f"{tag}-addition.json").write_text(json.dumps(data))
    (run / "evals" / "rl-000003-addition.json").write_text('{"metrics": ')


@pytest.fixture(scope="module")
def runs(tmp_path_factory, finished_tiny_run):
    root = tmp_path_factory.mktemp("view")
    _synthetic_run(root / "synth")
    (root / "broken").mkdir()
    (root / "broken" / "ledger.sqlite").write_text("not a database\n")
    return {"root": root, "t": finished_tiny_run}


@pytest.fixture(scope="module")
def server(runs):
    from zeroth.view.server import start_in_thread

    srv = start_in_thread([runs["t"], runs["root"]])
    yield srv
    srv.shutdown()
    srv.server_close()


LONG_NAMES = ["gsm8k-qwen2.5-0.5b-grpo-lr1e-6-seed3", "math500_distill_from_7b_without_dashes",
              "countdown-dapo-clip-higher", "code-humaneval-rloo"]


@pytest.fixture(scope="module")
def many(tmp_path_factory, finished_tiny_run):
    """A server over 14 runs as a sweep leaves them: the tiny run, 12 finished synthetic runs
    (some with long names) and `halted`, killed after RL step 3 with its checkpoint of step 2
    (its lock file there, nobody holding it)."""
    from zeroth.view.server import start_in_thread

    root = tmp_path_factory.mktemp("many")
    names = [*LONG_NAMES, *[f"seed-{i}" for i in range(1, 9)], "halted"]
    for name in names:
        _synthetic_run(root / name)
        if name != "halted":
            (root / name / "summary.json").write_text(json.dumps({"run": name}))
    halted = root / "halted"
    (halted / ".lock").touch()
    (halted / "checkpoints" / "rl-000002").mkdir(parents=True)
    (halted / "checkpoints" / "rl-000002" / "state.json").write_text('{"index": 0, "step": 2}')
    (halted / "checkpoints" / "LATEST").write_text("rl-000002")
    srv = start_in_thread([finished_tiny_run, root])
    yield {"server": srv, "names": ["t", *names], "halted": halted}
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: the browser tests drive Debian's headless "
                    "chromium — run `apt-get install chromium`", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed — run `pip install playwright` (its browsers "
                    "are not needed: the tests use Debian's chromium)", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A browser tab on the page, collecting console errors and uncaught exceptions."""

    def __init__(self, browser, url: str, width: int = 1280):
        self.errors: list[str] = []
        self.tab = browser.new_page(viewport={"width": width, "height": 900})
        self.tab.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.tab.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.tab.goto(url)
        self.tab.wait_for_selector("#runs input[type=checkbox]")
        self.tab.wait_for_selector("tr.rollout")

    def count(self) -> int:
        return int(self.tab.get_attribute("#rollout-count", "data-total"))

    # wait_for_function takes functions ("() => ..."), never bare expressions: the page's CSP
    # forbids the eval() playwright would poll a bare expression with.
    def wait_total(self, n: int, which: str = "#rollout-count") -> None:
        self.tab.wait_for_function(
            "([sel, n]) => document.querySelector(sel).dataset.total === String(n)",
            arg=[which, n], timeout=5000)

    def rows(self, attr: str) -> list[str]:
        return self.tab.eval_on_selector_all("tr.rollout", f"els => els.map(e => e.dataset.{attr})")

    def shot(self, name: str, selector: str | None = None) -> None:
        folder = os.environ.get("ZEROTH_SCREENSHOTS")
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        if selector:  # sticky bars would be stitched into a tall element's picture (set
            # through the DOM: the page's CSP refuses an added <style>)
            self.tab.eval_on_selector_all(
                "header, nav", "els => els.forEach(e => { e.style.position = 'static'; })")
        target = self.tab.locator(selector) if selector else self.tab
        target.screenshot(path=str(Path(folder) / f"view-{name}.png"))

    def close(self) -> None:
        self.tab.close()


@pytest.fixture
def page(browser, server):
    pages = []

    def open_page(query: str = "runs=t") -> Page:
        pages.append(Page(browser, f"{server.url}?poll={POLL_MS}&{query}"))
        return pages[-1]

    yield open_page
    for p in pages:
        p.close()


def _tiny(runs) -> list[dict]:
    ledger = Ledger(runs["t"] / "ledger.sqlite", readonly=True)
    try:
        return ledger.rollouts(phase="rl")
    finally:
        ledger.close()


def _points(d: str) -> int:
    return len(re.findall(r"[ML]", d))


# -- tests --------------------------------------------------------------------------------------


def test_page_loads_without_console_errors(page):
    p = page()
    p.tab.wait_for_selector("svg[data-metric=reward] path.series")
    p.tab.wait_for_selector("#evals tr.eval")
    p.tab.wait_for_selector("#eval-samples .eval-sample")
    label = p.tab.locator("#runs label[data-run=t]")
    assert label.locator("input").is_checked()
    assert label.locator(".badge").inner_text() == "finished"
    swatch = label.locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
    assert swatch not in ("", "transparent", "rgba(0, 0, 0, 0)")  # set despite the CSP
    hit = p.tab.locator("svg[data-metric=reward] rect.hit")
    hit.scroll_into_view_if_needed()
    box = hit.bounding_box()
    p.tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert "step" in p.tab.inner_text("#tooltip")
    p.shot("overview")
    p.tab.wait_for_timeout(2 * POLL_MS)  # a few polls
    assert p.errors == []


def test_reward_curve_has_a_point_per_step(page, runs):
    ledger = Ledger(runs["t"] / "ledger.sqlite", readonly=True)
    steps = ledger.metrics(phase="rl")
    ledger.close()
    p = page()
    path = p.tab.locator("svg[data-metric=reward] path.series")
    path.wait_for()
    assert path.count() == 1
    assert _points(path.get_attribute("d")) == len(steps) == 4
    assert p.tab.locator("svg[data-metric=accuracy][data-key=reward_correct]").count() == 1
    absent = [m for m in ("kl", "entropy", "grad_norm") if all(m not in s for s in steps)]
    for metric in absent:  # a metric no run logged gets no chart
        assert p.tab.locator(f"svg[data-metric={metric}]").count() == 0
    assert "kl" in absent


def test_heldout_curve_beside_the_training_accuracy(page):
    """rl.eval_every: the held-out pass@1 measured during RL (the tiny run: steps 2 and 4) is
    a chart of its own right after the training accuracy, one line through its points."""
    p = page()
    path = p.tab.locator("svg[data-metric=heldout_pass1] path.series")
    path.wait_for(state="attached")  # a flat line (the tiny run stays at 0) has no height
    assert _points(path.get_attribute("d")) == 2
    assert p.tab.locator("svg[data-metric=heldout_pass1] circle.pt").count() == 2
    charts = p.tab.locator("#charts .phase-charts[data-phase=rl] svg.chart-svg")
    order = [charts.nth(i).get_attribute("data-metric") for i in range(3)]
    assert order == ["accuracy", "heldout_pass1", "heldout_greedy"]


def test_step_timers_are_charted_in_the_order_the_step_runs_them(page):
    p = page()
    p.tab.wait_for_selector("svg[data-metric=time_gen]", state="attached")
    names = p.tab.locator("svg[data-metric^=time_]").evaluate_all(
        "els => els.map(e => e.dataset.metric)")
    assert names == ["time_gen", "time_reward", "time_adv", "time_ref", "time_update",
                     "time_sync", "time_record", "time_heldout"]
    caption = p.tab.locator("figure.chart", has=p.tab.locator("svg[data-metric=time_gen]"))
    assert "seconds: sample" in caption.text_content()  # among the other metrics, folded


def test_runs_overlay_in_one_chart(page):
    p = page("")  # no ?runs=: every run is drawn (there are only two)
    p.tab.wait_for_selector("svg[data-metric=reward] path.series[data-run=synth]")
    paths = p.tab.locator("svg[data-metric=reward] path.series")
    assert sorted(paths.evaluate_all("els => els.map(e => e.dataset.run)")) == ["synth", "t"]
    colours = paths.evaluate_all("els => els.map(e => e.getAttribute('stroke'))")
    assert len(set(colours)) == 2
    kl = p.tab.locator("svg[data-metric=kl] path.series")  # only synth logged kl
    assert kl.evaluate_all("els => els.map(e => e.dataset.run)") == ["synth"]
    assert _points(kl.get_attribute("d")) == 3
    p.shot("overlay")


def test_evals_table_shows_first_and_final(page):
    p = page()
    rows = p.tab.locator("#evals tr.eval")
    rows.first.wait_for()
    assert rows.evaluate_all("els => els.map(e => e.dataset.phase)") == ["eval_pretrain",
                                                                          "eval_rl"]
    assert rows.nth(0).locator("td.label").inner_text() == "after pretrain"
    assert "%" in rows.nth(1).inner_text()
    assert p.tab.locator("#evals tr.change").count() == 1
    p.shot("evals", "#sec-evals")


def test_evals_by_difficulty(page):
    p = page("runs=synth")
    table = p.tab.locator("#evals table.difficulty[data-phase=eval_rl]")
    table.wait_for()
    assert table.locator("tbody tr").count() == 2
    assert "37.5%" in table.inner_text()  # level 2 of eval_rl: pass@1 0.75 / 2


def test_checkpoint_evaluations_in_the_table_and_a_chart(page):
    p = page("runs=synth")
    block = p.tab.locator("#evals .eval-run[data-run=synth]")
    rows = block.locator("tr.saved")
    rows.first.wait_for()
    assert rows.evaluate_all("els => els.map(e => e.dataset.tag || null)") == [
        "rl-000001", "rl-000002", None]
    label = rows.nth(0).locator("td.label").inner_text()  # task named: synth has no config.yaml
    assert label == "checkpoint rl-000001 (rl step 1) · addition"
    assert "25.0%" in rows.nth(0).inner_text() and "75.0%" in rows.nth(1).inner_text()
    assert "cannot read evals/rl-000003-addition.json" in rows.nth(2).locator("td.bad").inner_text()
    assert block.locator("tr.change").count() == 1  # the run's own first -> last only
    levels = block.locator("table.difficulty[data-file='evals/rl-000002-addition.json']")
    assert "checkpoint rl-000002" in levels.locator("caption").inner_text()
    assert levels.locator("tbody tr").count() == 2
    chart = block.locator('svg[data-metric="eval-pass@1"]')
    assert chart.count() == 1
    for key in ("pass@1", "greedy"):
        assert _points(chart.locator(f"path[data-key='{key}']").get_attribute("d")) == 2
    phases = p.tab.eval_on_selector_all("#e-phase option", "els => els.map(e => e.value)")
    assert phases == ["eval_start", "eval_rl"]  # saved results have no samples to browse
    p.shot("checkpoint-evals", "#sec-evals")
    assert p.errors == []


def test_no_checkpoint_chart_without_two_checkpoint_evaluations(page):
    p = page()
    p.tab.locator("#evals tr.eval").first.wait_for()
    assert p.tab.locator("#evals tr.saved").count() == 0
    assert p.tab.locator('svg[data-metric="eval-pass@1"]').count() == 0


def test_rollout_count_step_filter_and_paging(page):
    p = page()
    p.wait_total(64)
    assert len(p.rows("step")) == 50
    assert p.tab.inner_text("#rollout-count") == "rows 1–50 of 64"
    p.tab.click("#r-next")
    p.tab.wait_for_function("() => document.querySelector('#rollout-count').textContent"
                            " === 'rows 51–64 of 64'")
    assert len(p.rows("step")) == 14
    p.tab.fill("#f-step", "1")
    p.wait_total(16)
    assert p.rows("step") == ["1"] * 16
    p.tab.click("#f-last")
    p.tab.wait_for_function("() => document.querySelector('tr.rollout').dataset.step === '4'")
    assert p.tab.input_value("#f-step") == "4"
    assert set(p.rows("step")) == {"4"}
    p.shot("rollouts", "#sec-rollouts")


def test_text_search_narrows_rows(page, runs):
    rows = _tiny(runs)
    q = rows[20]["prompt"]
    want = sum(q.lower() in (r["prompt"] + r["completion"]).lower() for r in rows)
    assert 0 < want < len(rows)
    p = page()
    p.wait_total(64)
    p.tab.fill("#f-q", q)
    p.wait_total(want)
    assert len(p.rows("id")) == want
    prompts = p.tab.eval_on_selector_all("tr.rollout td.prompt", "els => els.map(e => e.title)")
    assert q in prompts


def test_reward_range_filter(page, runs):
    rewards = sorted({r["reward"] for r in _tiny(runs)})
    assert len(rewards) >= 2
    lo = (rewards[0] + rewards[1]) / 2  # between two logged values: no float ties
    hi = rewards[-1] + 1
    want = sum(lo <= r["reward"] <= hi for r in _tiny(runs))
    p = page()
    p.wait_total(64)
    p.tab.fill("#f-reward-min", f"{lo:.6f}")
    p.tab.fill("#f-reward-max", f"{hi:.6f}")
    p.wait_total(want)
    shown = p.tab.eval_on_selector_all("tr.rollout td.strong",
                                       "els => els.map(e => Number(e.textContent))")
    assert len(shown) == min(want, 50) and min(shown) >= lo


def test_clicking_a_row_opens_its_group(page, runs):
    rows = [r for r in _tiny(runs) if r["step"] == 2 and r["prompt_idx"] == 1]
    p = page()
    p.tab.fill("#f-step", "2")
    p.wait_total(16)
    p.tab.click("tr.rollout[data-prompt='1'][data-sample='2']")
    cards = p.tab.locator("#group .sample")
    cards.first.wait_for()
    assert cards.count() == len(rows) == 4
    assert p.tab.inner_text("#group .gold-text") == rows[0]["answer"]
    for i in range(4):
        card = cards.nth(i)
        assert card.locator(".reasoning").count() == 1 and card.locator(".answer").count() == 1
        names = card.locator(".rewards dt").all_inner_texts()
        assert names == list(rows[i]["rewards"])
    assert "picked" in cards.nth(2).get_attribute("class")
    assert p.tab.locator("tr.rollout.in-group").count() == 4


def test_group_shows_reasoning_apart_from_answer(page):
    p = page("runs=synth")
    p.wait_total(12)
    p.tab.click("tr.rollout[data-step='3'][data-prompt='1'][data-sample='0']")
    card = p.tab.locator("#group .sample[data-sample='0']")
    card.wait_for()
    completion = _rollout(3, 1, 0)["completion"]
    reasoning, answer = split_reasoning(completion)
    assert card.locator(".answer").inner_text() == answer == "34"
    assert card.locator(".reasoning").inner_text() == reasoning
    assert card.locator(".reasoning mark.reflect").all_inner_texts() == ["Wait", "let me check"]
    assert "pos" in card.locator(".adv").get_attribute("class")
    assert "neg" in p.tab.locator("#group .sample[data-sample='1'] .adv").get_attribute("class")
    p.shot("group", "#group")


def test_clicking_a_chart_point_browses_that_step(page):
    p = page()
    point = p.tab.locator("svg[data-metric=reward] circle.pt").nth(2)  # step 3
    point.wait_for()
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    p.tab.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.wait_total(16)
    assert p.tab.input_value("#f-step") == "3"
    assert set(p.rows("step")) == {"3"}


def test_eval_samples_browser(page, runs):
    ledger = Ledger(runs["t"] / "ledger.sqlite", readonly=True)
    samples = ledger.evals("eval_rl")
    ledger.close()
    p = page()
    p.wait_total(len(samples), "#eval-count")
    assert p.tab.input_value("#e-phase") == "eval_rl"  # the last evaluation first
    cards = p.tab.locator("#eval-samples .eval-sample")
    assert cards.count() == min(20, len(samples))
    assert cards.first.locator(".reasoning").count() == 1
    p.tab.select_option("#e-correct", "0")
    p.wait_total(sum(not s["correct"] for s in samples), "#eval-count")
    p.shot("eval-samples", "#sec-eval-samples")


def test_live_update_keeps_filters(browser, runs, tmp_path):
    from zeroth.view.server import start_in_thread

    live = tmp_path / "runs" / "t"
    live.mkdir(parents=True)
    source = f"{(runs['t'] / 'ledger.sqlite').as_uri()}?mode=ro"  # shared: read only
    with closing(sqlite3.connect(source, uri=True)) as src, \
            closing(sqlite3.connect(live / "ledger.sqlite")) as dst:
        src.backup(dst)
    srv = start_in_thread([tmp_path / "runs"])
    p = Page(browser, f"{srv.url}?poll={POLL_MS}")
    try:
        p.wait_total(64)
        assert p.tab.locator("#runs .badge").inner_text() == "running"  # no summary, fresh write
        p.tab.fill("#f-len-min", "0")
        p.tab.fill("#f-q", "what is")
        p.wait_total(64)
        ledger = Ledger(live / "ledger.sqlite")
        ledger.log_metrics("rl", 5, {"reward": 0.5, "mean_len": 30.0})
        ledger.log_rollouts("rl", 5, [_rollout(5, i, j) for i in range(4) for j in range(4)])
        ledger.close()
        p.wait_total(80)
        p.tab.wait_for_function(
            "() => document.querySelector('svg[data-metric=reward] path.series')"
            ".dataset.points === '5'")
        assert p.tab.input_value("#f-len-min") == "0" and p.tab.input_value("#f-q") == "what is"
        assert p.errors == []
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()


def test_unreadable_run_is_greyed_and_the_others_work(page):
    p = page("")
    label = p.tab.locator("#runs label[data-run=broken]")
    assert "unreadable" in label.get_attribute("class")
    assert "cannot read ledger.sqlite" in label.get_attribute("title")  # shown on hover
    assert label.locator("input").is_disabled() and not label.locator("input").is_checked()
    assert label.locator(".badge").inner_text() == "unreadable"
    p.tab.wait_for_selector("svg[data-metric=reward] path.series[data-run=synth]")
    runs = p.tab.eval_on_selector_all("#f-run option", "els => els.map(e => e.value)")
    assert "broken" not in runs and {"t", "synth"} <= set(runs)
    p.tab.wait_for_timeout(2 * POLL_MS)
    assert p.errors == [] and p.tab.locator("#error").is_hidden()
    p.shot("runs", "#sec-runs")


def test_nan_component_is_not_shown_as_not_scored(page):
    p = page("runs=synth")
    p.wait_total(12)
    row = p.tab.locator("tr.rollout[data-step='3'][data-prompt='0'][data-sample='1']")
    assert row.locator(".comp").all_inner_texts() == ["correct NaN", "format –"]
    row.click()
    card = p.tab.locator("#group .sample[data-sample='1']")
    card.wait_for()
    assert card.locator(".rewards dd").all_inner_texts() == ["NaN", "not scored"]


def test_group_rows_are_marked_in_their_phase_only(page):
    p = page("runs=synth")
    p.wait_total(12)
    p.tab.click("tr.rollout[data-step='3'][data-prompt='1'][data-sample='0']")
    p.tab.locator("#group .sample").first.wait_for()
    assert p.tab.locator("tr.rollout.in-group").count() == 2
    p.tab.select_option("#f-phase", "rejection")
    p.wait_total(2)
    assert set(p.rows("phase")) == {"rejection"} and set(p.rows("prompt")) == {"1"}
    assert p.tab.locator("tr.rollout.in-group").count() == 0  # same step and prompt, not rl
    p.tab.select_option("#f-phase", "rl")
    p.wait_total(12)
    p.tab.wait_for_function("() => document.querySelectorAll('tr.rollout.in-group').length === 2")


# -- many runs, a laptop's width --------------------------------------------------------------


def _open_many(browser, many, width: int, picked: list[str]) -> Page:
    url = f"{many['server'].url}?poll={POLL_MS}&runs={','.join(picked)}"
    return Page(browser, url, width)


def test_a_stopped_run_says_where_it_stopped_and_how_to_resume(browser, many):
    p = _open_many(browser, many, 1400, ["halted"])
    try:
        card = p.tab.locator("#runs label[data-run=halted]")
        assert card.locator(".badge").inner_text() == "stopped"
        said = "stopped at rl step 3 (resume from rl-000002)"
        assert card.locator(".run-state").inner_text() == said
        assert said in card.locator(".badge").get_attribute("title")
        command = f"zeroth run --resume {many['halted']}"  # not below the working directory
        assert card.locator("code.resume").inner_text() == command
        assert command in card.get_attribute("title")
        card.locator("code.resume").click()  # selects the command, does not untick the run
        assert card.locator("input").is_checked()
        finished = p.tab.locator("#runs label[data-run=seed-1]")
        assert finished.locator(".badge").inner_text() == "finished"
        assert finished.locator(".run-state, code.resume").count() == 0
        assert p.errors == []
    finally:
        p.close()


@pytest.mark.parametrize("width", [800, 1400])
def test_the_page_fits_a_laptop_width(browser, many, width):
    """Nothing scrolls sideways with every run drawn, the rollout table filled and a group of
    samples open; each run's card is wide enough to read its name whole."""
    p = _open_many(browser, many, width, many["names"])
    try:
        p.tab.wait_for_selector("#evals .eval-run[data-run=t] tr.eval")
        p.tab.click("tr.rollout")
        p.tab.locator("#group .sample").first.wait_for()
        p.tab.wait_for_timeout(2 * POLL_MS)  # a few polls: nothing grows later
        wide = p.tab.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
        assert wide[0] <= wide[1] == width
        cards = p.tab.eval_on_selector_all("#runs label.run", """els => els.map(e => {
            const name = e.querySelector('.run-name');
            return [e.dataset.run, e.getBoundingClientRect().width,
                    name.scrollWidth <= name.clientWidth + 1, name.innerText];
        })""")
        assert sorted(c[0] for c in cards) == sorted(many["names"])
        for run, card_width, whole, text in cards:
            assert card_width >= 280, (run, card_width)  # not a cramped box
            assert whole and text == run  # never clipped nor ellipsised
        box = p.tab.eval_on_selector("#runs", "e => [e.scrollHeight, e.clientHeight]")
        assert box[0] <= box[1]  # the list shows every run without a scroll box of its own
        completion = p.tab.eval_on_selector("tr.rollout td.snippet",
                                            "e => e.getBoundingClientRect().width")
        assert completion >= 200  # the completion column stays readable
        p.shot(f"laptop-{width}")
        assert p.errors == []
    finally:
        p.close()


def test_runs_past_ten_keep_distinct_colours(browser, many):
    p = _open_many(browser, many, 1400, many["names"])
    try:
        swatches = p.tab.eval_on_selector_all(
            "#runs .swatch", "els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert len(swatches) == len(many["names"]) >= 14
        assert len(set(swatches)) == len(swatches)
        p.tab.wait_for_function(
            "n => document.querySelectorAll('svg[data-metric=reward] path.series').length === n",
            arg=len(many["names"]))
        series = p.tab.eval_on_selector_all(
            "svg[data-metric=reward] path.series",
            "els => els.map(e => [e.getAttribute('stroke'), e.getAttribute('stroke-dasharray')])")
        assert len({stroke for stroke, _ in series}) == len(series)
        assert sum(dash is not None for _, dash in series) == len(series) - 10  # past ten
        assert p.errors == []
    finally:
        p.close()



# -- a mix of task families with a curriculum (zeroth/tasks/mix.py) ---------------------------------


def _mix_run(path: Path) -> Path:
    """3 RL steps of a mix (addition, sorting): per-family accuracy, held-out pass@1 at step 2,
    levels, one level change after step 2, and an evaluation per family."""
    ledger = Ledger(path / "ledger.sqlite")
    for step in (1, 2, 3):
        row = {"reward": 0.1 * step, "reward_correct": 0.1 * step,
               "accuracy/addition": 0.2 * step, "accuracy/sorting": 0.1 * step,
               "level/addition": 2 if step < 3 else 3, "level/sorting": 3}
        if step == 2:
            row.update({"heldout_pass1/addition": 0.5, "heldout_pass1/sorting": 0.25})
        ledger.log_metrics("rl", step, row)
        ledger.log_rollouts("rl", step, [{**_rollout(step, p, s),
                                          "task": ("addition", "sorting")[p]}
                                         for p in range(2) for s in range(2)])
    ledger.set_meta("curriculum", [{"stage": "rl", "step": 2, "family": "addition",
                                    "knob": "digits", "from": 2, "to": 3, "accuracy": 0.75,
                                    "window": 4}])
    ledger.log_metrics("eval_rl", 0, {"pass@1": 0.5, "greedy": 0.5, "problems": 4, "k": 1})
    ledger.set_meta("eval_rl_by_task", {"addition": {"problems": 2, "pass@1": 0.75},
                                        "sorting": {"problems": 2, "pass@1": 0.25}})
    ledger.close()
    return path


@pytest.fixture(scope="module")
def mix_server(tmp_path_factory):
    from zeroth.view.server import start_in_thread

    root = tmp_path_factory.mktemp("mixview")
    _mix_run(root / "mixed")
    srv = start_in_thread([root])
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_mix_charts_each_family_and_its_level_changes(browser, mix_server):
    p = Page(browser, f"{mix_server.url}?poll={POLL_MS}&runs=mixed")
    try:
        chart = p.tab.locator("svg[data-metric='accuracy per task']")
        chart.wait_for(state="attached")
        lines = chart.locator("path.series").evaluate_all(
            "els => els.map(e => `${e.dataset.family}:${e.dataset.key}`)")
        assert sorted(lines) == ["addition:accuracy", "addition:heldout_pass1",
                                 "sorting:accuracy", "sorting:heldout_pass1"]
        assert chart.locator("line.level-change[data-family=addition]").count() == 1
        levels = p.tab.locator("svg[data-metric='curriculum level per task'] path.series")
        assert levels.count() == 2
        assert p.tab.locator("svg[data-metric^='accuracy/']").count() == 0  # not one by one
        table = p.tab.locator("table.curriculum[data-phase=rl]").inner_text()
        assert "addition" in table and "2 → 3" in table and "75.0%" in table
        by_task = p.tab.locator("#evals table.by-task[data-phase=eval_rl]")
        by_task.wait_for()
        assert by_task.locator("tbody tr").count() == 2 and "25.0%" in by_task.inner_text()
        p.shot("mix")
        assert p.errors == []
    finally:
        p.close()
