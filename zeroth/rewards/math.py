"""Math answer correctness: extract the stated answer, decide equivalence with math-verify.

`math_accuracy(completions, answer=[...])` scores 1.0 / 0.0 per completion (None when the
reference is missing). Only an answer the completion *states* can score, read after the
reasoning (the last `</think>`; an unclosed `<think>` states nothing) with fenced code left out:
the `<answer>…</answer>` block (its `\\boxed{}` if it has one; several blocks that disagree
state no answer), else the `\\boxed{}` / `\\fbox{}` answers. An unclosed `<answer>` or
`\\boxed{` states nothing. Free text is read only when the task allows it
(`answer_fallback`, task.options.answer_fallback of the math tasks): "marker" takes the line
after a final `####` or "the answer is" / "final answer:", "last_number" then the last number
of the text. The default, "none", gives noise no credit: `?x7 bq` does not score against 7.
References may be plain numbers, GSM8K solutions (`… #### 72`), MATH solutions (the last
`\\boxed{}`) or LaTeX.

What counts (the tests hold a table of cases):

* the same value in any form math-verify knows: `\\frac{6}{2}` = `3` = `3.0` = `x = 3`,
  `1,000` = `1{,}000` = `1\\,000` = `1000`, `\\frac{\\sqrt2}{2}` = `\\frac{1}{\\sqrt2}`, LaTeX
  intervals, sets in any order, symbolic expressions equal after simplification, `1e3` = `1000`;
* percentages: `50\\%` matches both `50` and `0.5` (math-verify's rule);
* units and currency are dropped: `5 cm`, `\\$18`, `18 dollars`, `5\\text{ apples}`;
* an equation counts by its last right-hand side (`x = 3`, `2 + 1 = 3`, and so `4 = 3` too);
* a decimal for a non-terminating exact reference only when it agrees to 6 decimal places
  (math-verify's rounding) and to 1e-5 relative: `0.333333` counts for 1/3, `0.333` does not;
  two plain decimals compare exactly; numbers must agree to 1e-5 relative before math-verify
  is asked, which rejects its known false positives on tiny values (`\\frac{1}{2^{99}}` vs
  `\\frac{1}{2^{98}}`, `0` vs `10^{-7}`); irrational expressions closer than math-verify's
  15-digit check (`\\sqrt2 + 10^{-20}` vs `\\sqrt2`) still pass;
* postfix operators are read as such: `3!` is 6 (a `!` is never dropped as punctuation), `5!!`
  is the double factorial 15, `\\frac{1}{2004!}` is not `\\frac{1}{2006!}` (numbers are compared
  at sympy's precision, whatever their exponent); primes count: `f'(x)` is not `f(x)`.

What does not: several candidate values (`3 or 4`, `3, 4, 5`, disagreeing `\\boxed{}`s, `\\pm 3`,
a set or interval) unless the reference is itself such a set; `x > 2`; `\\infty`, `nan`, `1/0`;
words; non-ASCII digits (Arabic-Indic, fullwidth, mathematical bold 3 ...: no normalisation);
answers over 1,000 characters or nested deeper than 20; TeX primitives (`\\def`, `\\input`, ...);
numbers with more than 100,000 digits, exponents above 10**6, factorials above 20,000.

Every check runs in a `CheckPool` worker process with a hard deadline (2 s of CPU, and the
worker is killed after 3 s of wall-clock time, by default; see `configure_math_pool`): a
hostile answer costs at most that and scores 0.0, from any thread. A check whose worker dies
without being killed for its deadline (an OOM kill, a kill from outside) runs again on a fresh
worker; one that kills that worker too scores None (the pool's `DIED`: a verifier failure, not
a wrong answer). math-verify's own timeouts use SIGALRM, which only works in a main thread (off
it, math-verify raises ValueError) and cannot stop a long C call, so they are switched off here.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from fractions import Fraction
from functools import lru_cache

from zeroth.rewards.pool import DIED, CheckPool
from zeroth.rewards.shaping import after_thinking

MAX_ANSWER_CHARS = 1000
MAX_NESTING = 20
MAX_BOXES = 20
MAX_DIGITS = 100_000
_REL_TOL = 1e-5

# ---------------------------------------------------------------- extraction (parent process)


_BRACE = re.compile(r"\\?[{}]")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each unescaped `{` -> its matching `}` (one linear pass)."""
    pairs, stack = {}, []
    for match in _BRACE.finditer(text):
        token = match.group()
        if token == "{":
            stack.append(match.start())
        elif token == "}" and stack:
            pairs[stack.pop()] = match.start()
    return pairs


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_contents(text: str) -> list[str]:
    """Contents of the outermost balanced `\\boxed{…}` / `\\fbox{…}`, left to right."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs, found, after = _matching_braces(text), [], 0
    for match in _BOX.finditer(text):
        start = match.end() - 1
        if start < after or start not in pairs:
            continue
        after = pairs[start]
        found.append(text[start + 1:after])
    return found


def _unbox(text: str) -> str:
    """`\\boxed{\\boxed{3}}` -> `3`."""
    text = text.strip()
    while (match := _BOX.match(text)) and _matching_braces(text).get(match.end() - 1) == \
            len(text) - 1:
        text = text[match.end():-1].strip()
    return text


def _one_answer(boxes: list[str]) -> str | None:
    """A single boxed answer, or all distinct ones joined as a list (hedging becomes a set);
    None for more than MAX_BOXES of them."""
    if len(boxes) > MAX_BOXES:
        return None
    distinct = list(dict.fromkeys(_clean(_unbox(b)) if len(b) <= MAX_ANSWER_CHARS else b
                                  for b in boxes))
    return distinct[0] if len(distinct) == 1 else ", ".join(distinct)


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:\s*/\s*\d+)?(?:\s*%)?")  # \d: look-alikes too
_CODE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)  # fenced code, to its end if left open
_CODE_BODY = re.compile(r"```[^\n]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MARKER = re.compile(r"####|\b(?:the\s+)?(?:final\s+)?answer(?:\s+is\b|\s*:)", re.IGNORECASE)
FALLBACKS = ("none", "marker", "last_number")  # how far extraction looks past tags and boxes


def _nonempty(answer: str | None) -> str | None:
    return answer.strip() or None if answer else None


def _block_answer(block: str) -> str | None:
    boxes = boxed_contents(block)
    return _nonempty(_one_answer(boxes) if boxes else block)


def _after_marker(text: str) -> str | None:
    """The rest of the line after the last `####` or "the answer is" / "final answer:", up to
    the end of its sentence; None when a number follows on that line (`72? No, 80`)."""
    found = list(_MARKER.finditer(text))
    if not found:
        return None
    line = text[found[-1].end():].split("\n", 1)[0]
    answer, _, rest = (re.split(r"(\.(?:\s|$))", line, maxsplit=1) + ["", ""])[:3]
    return None if re.search(r"\d", rest) else _nonempty(answer)  # `5!` is 120


def extract_math_answer(text: str, fallback: str = "none") -> str | None:
    """The answer the completion states, or None when it states none (see the module doc).

    Read after the reasoning, with fenced code left out: the `<answer>` block (its `\\boxed{}`
    when it has one; several blocks that disagree state no answer), else the `\\boxed{}`
    answers. Free text counts only when `fallback` allows it: "marker" also reads the line after
    a final `####` or "the answer is", "last_number" (after that) the text's last number."""
    if fallback not in FALLBACKS:
        raise ValueError(f"answer fallback must be one of {', '.join(FALLBACKS)}, got "
                         f"{fallback!r}")
    text = after_thinking(text or "")
    code = [match.span() for match in _CODE.finditer(text)]
    blocks = [match.group(1) for match in _BLOCK.finditer(text)
              if not any(start <= match.start() < end for start, end in code)]
    if blocks:  # a fence inside an answer block is only its wrapping
        answers = {_block_answer(_CODE_BODY.sub(r"\1", block)) for block in blocks}
        return answers.pop() if len(answers) == 1 else None
    text = _CODE.sub(" ", text)
    boxes = boxed_contents(text)
    if boxes:
        return _nonempty(_one_answer(boxes))
    if "<answer>" in text or _BOX.search(text) or fallback == "none":
        return None  # nothing stated, or an answer block or box begun and cut off
    marked = _after_marker(text)
    if marked or fallback == "marker":
        return marked
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_gold(reference) -> str | None:
    """The reference answer from a plain value, a GSM8K `#### n` solution or a MATH `\\boxed{}`
    solution; None when missing or empty."""
    if reference is None:
        return None
    text = str(reference).strip()
    if "####" in text:
        text = text[text.rfind("####") + 4:].strip()
    else:
        boxes = boxed_contents(text)
        if boxes:
            text = boxes[-1].strip()
    return _clean(text) or None


# ---------------------------------------------------------------- cleaning and screening

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_LEAD = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is\b)?\s*:?\s*|^(?:=|\\approx|~|≈)\s*",
                   re.IGNORECASE)
_SEPARATED = re.compile(r"-?\d{1,3}(?:(?:\\,|\{,\}|\\ |\\;|~| |,)\d{3})+(?:\.\d+)?", re.ASCII)
_SEPARATOR = re.compile(r"\\,|\{,\}|\\ |\\;|~| |,")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)", re.ASCII)
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥)\s*(?=[-\d.])", re.ASCII)
_WORDS = re.compile(r"(-?\d[\d.,]*(?:(?:\\,| )\d{3})*\s*%?)\s*((?:[A-Za-z]{2,}\.?\s*){1,3})",
                    re.ASCII)
_APPROX = re.compile(r"\\(?:approx|simeq|sim)(?![a-zA-Z])|≈")
_MATH_WORDS = {"pi", "or", "and", "nan", "inf", "infinity", "oo", "sqrt", "percent",
               "percentage", "pct", "plus", "minus", "over", "to", "of", "mod"}


def _strip_outer_braces(text: str) -> str:
    while text.startswith("{") and text.endswith("}") and _matching_braces(text).get(0) == \
            len(text) - 1:
        text = text[1:-1].strip()
    return text


_MARKDOWN = re.compile(r"^(\*\*|__)([^*_].*?)\1$")  # **72**: markdown bold around it


def _clean(text: str) -> str:
    """Canonical surface form: no math delimiters, no 'the answer is', no trailing punctuation,
    no redundant outer braces, thousands separators and unit words dropped from numbers."""
    if len(text) > MAX_ANSWER_CHARS:
        return text  # rejected by _acceptable; do no work on it
    text = " ".join(text.split())
    for _ in range(3):
        for left, right in _DELIMITERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and \
                    text.endswith(right):
                text = text[len(left):-len(right)].strip()
        text = _LEAD.sub("", text).rstrip(".;,: ").strip()  # `!` is a factorial, not punctuation
        text = _strip_outer_braces(_MARKDOWN.sub(r"\2", text))
    if not text.endswith("$"):
        text = _CURRENCY.sub("", text)
    words = _WORDS.fullmatch(text)
    if words and not set(words.group(2).lower().replace(".", " ").split()) & _MATH_WORDS:
        text = words.group(1).strip()
    if _SEPARATED.fullmatch(text):
        text = _SEPARATOR.sub("", text)
    text = _APPROX.sub("=", text)  # `7 \\approx 8` states 8, as `7 = 8` does
    scientific = _SCIENTIFIC.fullmatch(text)
    if scientific:
        text = f"{scientific.group(1)} \\times 10^{{{scientific.group(2)}}}"
    return text


_PRIMITIVES = re.compile(
    r"\\(?:[egx]?def|let|input|include|newcommand|renewcommand|providecommand|csname|catcode|"
    r"write|read|open(?:in|out)|immediate|expandafter|usepackage|documentclass|special|"
    r"directlua|url|href)(?![a-zA-Z])")


_TEXT = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname)\s*\{([^{}]*)\}")
_HEDGE_WORDS = re.compile(r"\b(?:or|and|maybe|perhaps|possibly|either|approx\w*)\b",
                          re.IGNORECASE)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


def _acceptable(answer: str) -> bool:
    """Cheap screens before any parsing: size, nesting, TeX primitives, look-alike digits."""
    if not answer or len(answer) > MAX_ANSWER_CHARS or "**" in answer:
        return False
    if any(ord(ch) > 127 and unicodedata.numeric(ch, None) is not None for ch in answer):
        return False
    if any(_HEDGE_WORDS.search(words) or re.search(r"\d", words)
           for words in _TEXT.findall(answer)):
        return False  # `7\\text{ or 8}`: a unit must not hold a number or a hedge
    return _nesting(answer) <= MAX_NESTING and not _PRIMITIVES.search(answer)


_PLAIN = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _plain_number(text: str) -> Fraction | None:
    """The exact value of a plain ASCII decimal (`72`, `-0.5`, `1,000` after cleaning)."""
    return Fraction(text) if len(text) < 50 and _PLAIN.fullmatch(text) else None


# ---------------------------------------------------------------- equivalence (worker process)

_NORMALIZATION = None


def _parse(latex: str):
    """(sympy expression or None, normalised string) — math-verify's LaTeX path, one candidate
    only (its `parse` would search the text for several), with its signal timeouts off."""
    global _NORMALIZATION
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig, normalize_latex
    from math_verify.parser import parse_latex_cached

    if _NORMALIZATION is None:  # math-verify's default LaTeX normalisation
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled"
        _NORMALIZATION = NormalizationConfig(basic_latex=True, units=True,
                                             malformed_operators=True, nits=True, boxed="all")
    text = normalize_latex(latex, _NORMALIZATION).strip()
    if "!!" in text:
        text = _DOUBLE_FACTORIAL.sub(_double_factorial, text)
        if "!!" in text:
            return None, text  # (2n)!!, 5!!!: the parser would read (n!)!; compare as text
    try:
        return parse_latex_cached(text), text
    except Exception:  # noqa: BLE001 — unparseable: only an identical string can match it
        return None, text


_DOUBLE_FACTORIAL = re.compile(r"(?<![\d.])(\d{1,4})\s*!!(?!!)")
_PRIME = re.compile(r"'|\\prime\b")


def _primes(answer: str) -> int:
    """Primes on the right-hand side: `f'(x) = 2x` states 2x; `f'(x)` is not `f(x)`."""
    return len(_PRIME.findall(answer.rsplit("=", 1)[-1]))


def _double_factorial(match: re.Match) -> str:
    """`7!!` as its value 7·5·3·1 = 105 (math-verify's parser reads it as (7!)!)."""
    return str(math.prod(range(int(match.group(1)), 0, -2)))


_parse_gold = lru_cache(maxsize=4096)(_parse)  # a group's completions share one reference


def _log10_bound(node) -> float:
    """An upper bound on log10 of the magnitude of `node` (symbols count as 10), computed
    without evaluating it; inf when it is beyond MAX_DIGITS digits."""
    import sympy

    if isinstance(node, sympy.Integer):
        return int(node).bit_length() * 0.30103
    if isinstance(node, sympy.Rational):
        return max(int(node.p).bit_length(), int(node.q).bit_length()) * 0.30103
    if isinstance(node, sympy.Float):
        return math.log10(abs(float(node)) + 1) if node.is_finite else 1.0
    if isinstance(node, sympy.MatrixBase):
        return max((_log10_bound(entry) for entry in node), default=1.0)
    if not isinstance(node, sympy.Basic) or not node.args:
        return 1.0
    args = [_log10_bound(arg) for arg in node.args]
    if isinstance(node, sympy.Pow) or node.func == sympy.exp:
        exponent = args[-1]
        bound = float("inf") if exponent > 6 else 10 ** exponent * (args[0] + 1)
    elif node.func in (sympy.factorial, sympy.gamma, sympy.factorial2, sympy.subfactorial):
        bound = float("inf") if args[0] > 4.3 else 10 ** args[0] * (args[0] + 1)
    elif isinstance(node, sympy.Mul):
        bound = sum(args)
    else:
        bound = max(args) + 1
    return bound if bound <= MAX_DIGITS else float("inf")


def _too_big(expr) -> bool:
    try:
        return _log10_bound(expr) > MAX_DIGITS
    except (RecursionError, TypeError, ValueError, OverflowError):
        return True


def _compound(expr) -> bool:
    """A set, interval, tuple, matrix or conjunction: several values, not one."""
    import sympy
    from latex2sympy2_extended.logic import And

    return isinstance(expr, (sympy.Set, sympy.Tuple, sympy.MatrixBase, And, sympy.And))


def _single_valued(expr) -> bool:
    """A plain value (not compound, not a relation such as `x > 2`, which may equal a set)."""
    from sympy.core.relational import Relational

    return not _compound(expr) and not isinstance(expr, Relational)


def _close(gold, pred) -> bool:
    """False when two plain numbers differ by more than _REL_TOL of their size; True otherwise
    (symbols, sets, percentages: left to math-verify). This vetoes math-verify's absolute
    tolerances (1/2**99 is not 1/2**98, 0.0 is not 1e-7) and skips its slow simplification
    for numbers that are plainly different."""
    import sympy

    if _compound(gold) or _compound(pred) or isinstance(gold, sympy.core.relational.Relational):
        return True
    if isinstance(pred, sympy.core.relational.Relational):
        pred = pred.rhs
    if gold.free_symbols or pred.free_symbols or gold.has(sympy.UnevaluatedExpr) or \
            pred.has(sympy.UnevaluatedExpr):
        return True  # symbolic, or a percentage (math-verify compares 50% with 50 and 0.5)
    try:  # sympy's floats keep any exponent: 1/2004! and 1/2006! are not both 0.0
        g, p = sympy.N(gold, 30), sympy.N(pred, 30)
        return bool(abs(g - p) <= _REL_TOL * sympy.Max(abs(g), abs(p)))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return True  # not two finite numbers (infinity, nan): left to math-verify


def _equivalent(gold: str, pred: str) -> bool:
    from math_verify import verify

    if _primes(gold) != _primes(pred):
        return False  # f'(x) is not f(x): math-verify's normalisation drops primes
    (gold_expr, gold_text), (pred_expr, pred_text) = _parse_gold(gold), _parse(pred)
    if gold_expr is None or pred_expr is None:
        return bool(gold_text) and gold_text == pred_text
    if _too_big(gold_expr) or _too_big(pred_expr):
        return False
    if _compound(pred_expr) and _single_valued(gold_expr):
        return False  # hedging: several values (or a set) for a single-valued reference
    if not _close(gold_expr, pred_expr):
        return False  # numerically apart: no need for math-verify's (slow) simplification
    return bool(verify(gold_expr, pred_expr, timeout_seconds=None))


def verify_pair(pair: tuple[str, str]) -> bool:
    """True when the cleaned predicted answer equals the cleaned reference (runs in a worker).

    Anything sympy raises on the way (MemoryError under the worker's memory cap, RecursionError,
    malformed trees) means "not shown equal", as in math-verify; a missing library is not
    swallowed (ImportError reaches the caller as a verifier failure)."""
    try:
        return _equivalent(*pair)
    except ImportError:
        raise
    except Exception:  # noqa: BLE001
        return False


_WARM_UP = [("\\frac{1}{2}", "0.5"), ("x^2+2x+1", "(x+1)^2"), ("[1, 2]", "[1,2]"),
            ("x > 2", "(2, \\infty)"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")]


def warm_up() -> None:
    """Import math-verify and run a few checks, so that sympy's lazy imports (half a second for
    the first simplification) are paid before a worker's first timed check, and a missing or
    broken library fails the pool's start instead of every check."""
    import math_verify  # noqa: F401

    for pair in _WARM_UP:
        if not verify_pair(pair):
            raise RuntimeError(f"math-verify does not find {pair[0]} = {pair[1]}")


# ---------------------------------------------------------------- the reward (parent process)

_POOL: CheckPool | None = None
_POOL_LOCK = threading.Lock()
_SETTINGS = {"workers": None, "timeout": 2.0}


def configure_math_pool(workers: int | None = None, timeout: float = 2.0) -> None:
    """Worker count (default os.cpu_count()) and per-check limit in seconds of CPU time (a
    worker that has not answered after timeout + 1 s of wall-clock time is killed). Stops the
    current pool; the next call starts a new one. Not to be called while checks are running."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
        _POOL = None
        _SETTINGS.update(workers=workers, timeout=timeout)


def math_pool() -> CheckPool:
    """The shared pool of equivalence-check workers (created on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = CheckPool("zeroth.rewards.math:verify_pair", workers=_SETTINGS["workers"],
                              init="zeroth.rewards.math:warm_up",
                              timeout=_SETTINGS["timeout"], grace=1.0)
        return _POOL


def _quick(gold: str, pred: str) -> float | None:
    """1.0 / 0.0 when decidable without sympy (screens, identical text, two plain decimals)."""
    if not _acceptable(pred):
        return 0.0
    if pred == gold:
        return 1.0
    gold_value, pred_value = _plain_number(gold), _plain_number(pred)
    if gold_value is not None and pred_value is not None:
        return float(gold_value == pred_value)
    return None


def _text(completion) -> str:
    """A completion as text: a string, or TRL's conversational form (the last message)."""
    if isinstance(completion, list):
        completion = completion[-1].get("content", "") if completion else ""
    return completion if isinstance(completion, str) else ""


def math_accuracy(completions: list[str], answer: list, answer_fallback: str = "none",
                  **_: object) -> list[float | None]:
    """1.0 when the answer the completion states is equivalent to the reference, else 0.0 (also
    when it states none); None when the reference is missing. `answer_fallback` ("none",
    "marker", "last_number") says whether free text may state it: see `extract_math_answer`.
    None too for a check that killed two workers in a row (DIED). Raises RuntimeError when the
    check workers cannot run."""
    scores: list[float | None] = []
    pending: list[tuple[int, tuple[str, str]]] = []
    for i, (completion, reference) in enumerate(zip(completions, answer, strict=True)):
        gold = extract_gold(reference)
        if gold is None:
            scores.append(None)
            continue
        pred = extract_math_answer(_text(completion), answer_fallback)
        pred = _clean(pred) if pred is not None else None
        quick = 0.0 if not pred else _quick(gold, pred)
        scores.append(quick)
        if quick is None:
            pending.append((i, (gold, pred)))
    if pending:
        results = math_pool().map([pair for _, pair in pending])
        for (i, _pair), same in zip(pending, results, strict=True):
            scores[i] = None if same == DIED else 1.0 if same is True else 0.0
    return scores
