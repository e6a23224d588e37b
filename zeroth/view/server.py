"""The HTTP side of `zeroth view`: run discovery, routing, parameters and JSON responses.

Stdlib only. Each request finds the runs afresh and opens its ledger read-only, so the page
follows runs that are still writing and runs started after the server.

    server = start_in_thread(["runs"], port=0)   # tests and notebooks
    print(server.url); ...; server.shutdown(); server.server_close()

The JSON API the page uses (GET; errors are `{"error": "one line"}` with 400/403/404/500; NaN
and infinities are null, or the strings "nan"/"inf" in reward components):
    /api/runs                          every run: status (running | finished | stopped |
                                       starting | unreadable; zeroth/pipeline/runstate.py), status_text
                                       ("stopped at rl step 34 (resume from rl-000030)"), at
                                       {stage, step, checkpoint, after}, resume (the command
                                       that continues a stopped run, else null), task,
                                       algorithm, model, phases, events (stops, damaged
                                       checkpoints, salvaged ledgers: {time, kind, text}),
                                       updated (last write), summary
    /api/metrics?run=ID                per phase: steps and one series per logged metric; the
                                       curriculum's level changes (task.curriculum)
    /api/evals?run=ID                  the run's evaluations, then `zeroth eval` results saved
                                       in runs/<name>/evals/ (per checkpoint), per difficulty
    /api/eval_samples?run=ID&phase=P   [&problem=I&correct=0|1&q=TEXT&offset=&limit=]
    /api/rollouts?run=ID               [&phase=&step=&step_min=&step_max=&task=&difficulty=
                                       &reward_min=&reward_max=&len_min=&len_max=&q=TEXT
                                       &order=step|-step|reward|-reward|len|-len&offset=&limit=]
                                       a page of rows (snippets) and the filtered total
    /api/group?run=ID&phase=P&step=N&prompt=I    one prompt's G samples, full text
    /api/steps?run=ID[&phase=P]        ranges for the filter widgets
"""

from __future__ import annotations

import errno
import ipaddress
import json
import math
import mimetypes
import os
import socket
import sqlite3
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from zeroth.errors import UserError
from zeroth.pipeline.runstate import last_write, run_state
from zeroth.record.thoughts import REFLECTION_PHRASES
from zeroth.view import queries

STATIC = Path(__file__).with_name("static")
LEDGER = "ledger.sqlite"
MAX_LIMIT = 500
INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores: bigger numbers would overflow, not match
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# -- finding runs -------------------------------------------------------------------------------


def resolve_roots(paths: list[str | Path]) -> list[Path]:
    """Check each argument is a run directory or a folder holding runs; UserError otherwise."""
    roots = []
    for raw in paths or ["runs"]:
        path = Path(raw).expanduser()
        if path.is_file() and path.name == LEDGER:
            path = path.parent
        if not path.exists():
            raise UserError(f"'{raw}' does not exist — give a run directory (runs/<name>) or a "
                            "folder of runs (runs/)")
        if not (path / LEDGER).is_file() and not _subruns(path):
            raise UserError(f"'{raw}' holds no runs (no {LEDGER} in it or its subfolders) — "
                            "give runs/<name> or the runs/ folder of a `zeroth run`")
        roots.append(path.resolve())
    return roots


def _subruns(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [c for c in children if c.is_dir() and (c / LEDGER).is_file()]


def find_runs(roots: list[Path]) -> dict[str, Path]:
    """{run id: run dir}: run ids are folder names, made unique with -2, -3, ..."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for root in roots:
        for run_dir in [root] if (root / LEDGER).is_file() else _subruns(root):
            if run_dir in seen:
                continue
            seen.add(run_dir)
            name, n = run_dir.name, 1
            while (name if n == 1 else f"{name}-{n}") in found:
                n += 1
            found[name if n == 1 else f"{name}-{n}"] = run_dir
    return found


def _config(run_dir: Path) -> dict:
    import yaml  # a project dependency; only needed here

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def _summary(run_dir: Path):
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_entry(run_id: str, run_dir: Path) -> dict:
    """The /api/runs entry of one run; a ledger SQLite cannot read is listed as "unreadable"
    (with the reason in "error") so the other runs still show."""
    cfg, summary, state = _config(run_dir), _summary(run_dir), run_state(run_dir)
    model = _section(cfg, "model").get("path")
    entry = {"id": run_id, "path": str(run_dir), "status": state["status"],
             "status_text": state["text"], "resume": state["resume"],
             "at": {k: state[k] for k in ("stage", "step", "checkpoint", "after")},
             "task": _section(cfg, "task").get("name"),
             "algorithm": _section(cfg, "rl").get("algorithm"),
             "model": os.path.basename(str(model).rstrip("/")) if model else
             ("scratch" if cfg else None),
             "phases": [], "events": [], "updated": last_write(run_dir), "summary": summary,
             "evals_updated": queries.saved_evals_updated(run_dir)}
    try:
        with closing(queries.connect(run_dir / LEDGER)) as conn:
            entry["phases"] = queries.phase_summary(conn)
            entry["events"] = queries.events(conn)
    except sqlite3.Error as e:
        entry.update(status="unreadable", status_text="unreadable", error=ledger_error(e))
    return entry


def ledger_error(e: sqlite3.Error) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"cannot read {LEDGER}: {text}"


# -- parameters ---------------------------------------------------------------------------------


class Params:
    """Query-string values; empty ones count as absent; bad numbers raise a 400."""

    def __init__(self, query: str):
        self.values = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def str(self, name: str, required: bool = False):
        value = self.values.get(name, "")
        if value == "" and required:
            raise HttpError(400, f"missing query parameter '{name}'")
        return value or None

    def number(self, name: str, kind=int, required: bool = False, lo=None, hi=None):
        """The parameter as an int (within signed 64 bits, as SQLite stores them) or a finite
        float, within [lo, hi] where given; None when absent."""
        text = self.str(name, required)
        if text is None:
            return None
        shown = repr(text if len(text) <= 40 else text[:40] + "…")
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise HttpError(400, f"'{name}' must be {what}, got {shown}") from None
        if kind is float and not math.isfinite(value):
            raise HttpError(400, f"'{name}' must be a finite number, got {shown}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise HttpError(400, f"'{name}' must be {_bounds(lo, hi)}, got {shown}")
        if kind is int and not INT64[0] <= value <= INT64[1]:
            raise HttpError(400, f"'{name}' must fit in a signed 64-bit integer, got {shown}")
        return value

    def page(self) -> tuple[int, int]:
        offset = self.number("offset", lo=0) or 0
        limit = self.number("limit", lo=1, hi=MAX_LIMIT)
        return offset, 50 if limit is None else limit


def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def rollout_filters(p: Params) -> dict:
    order = p.str("order") or "step"
    if order not in queries.ORDERS:
        raise HttpError(400, f"'order' must be one of {', '.join(queries.ORDERS)}, got {order!r}")
    f = {key: p.number(key) for key in ("step", "step_min", "step_max", "len_min", "len_max")}
    f.update({key: p.number(key, float) for key in ("reward_min", "reward_max")})
    f.update({key: p.str(key) for key in ("phase", "task", "difficulty", "q")})
    f["order"] = order
    return f


# -- routes -------------------------------------------------------------------------------------


def api_runs(server, p: Params) -> dict:
    runs = [run_entry(i, d) for i, d in find_runs(server.roots).items()]
    return {"runs": sorted(runs, key=lambda r: -r["updated"]),
            "reflection_phrases": list(REFLECTION_PHRASES)}  # the page highlights them


def api_metrics(server, p: Params) -> dict:
    run_id, conn = server.open_run(p)
    with closing(conn):
        return {"run": run_id, "phases": queries.metrics(conn),
                "curriculum": queries.curriculum(conn)}


def api_evals(server, p: Params) -> dict:
    """The run's own evaluations (ledger eval phases, in run order), then those `zeroth eval`
    saved in the run directory (checkpoint by checkpoint, in training order)."""
    run_id, conn = server.open_run(p)
    with closing(conn):
        found = queries.evals(conn)
    return {"run": run_id, "evals": found + queries.saved_evals(server.run_dir(run_id))}


# Each route reads and checks its parameters before it opens the ledger.


def api_eval_samples(server, p: Params) -> dict:
    f = {"phase": p.str("phase"), "problem": p.number("problem"), "q": p.str("q"),
         "correct": p.number("correct", lo=0, hi=1)}
    page = p.page()
    run_id, conn = server.open_run(p)
    with closing(conn):
        return {"run": run_id, **queries.eval_samples(conn, f, *page)}


def api_rollouts(server, p: Params) -> dict:
    f, page = rollout_filters(p), p.page()
    run_id, conn = server.open_run(p)
    with closing(conn):
        return {"run": run_id, **queries.rollouts(conn, f, *page)}


def api_group(server, p: Params) -> dict:
    phase, step = p.str("phase", required=True), p.number("step", required=True)
    prompt = p.number("prompt", required=True)
    run_id, conn = server.open_run(p)
    with closing(conn):
        found = queries.group(conn, phase, step, prompt)
    if found is None:
        raise HttpError(404, f"run {run_id} has no rollouts of {phase} step {step} prompt {prompt}")
    return found


def api_steps(server, p: Params) -> dict:
    phase = p.str("phase")
    run_id, conn = server.open_run(p)
    with closing(conn):
        return {"run": run_id, **queries.steps(conn, [phase] if phase else
                                                queries.training_phases(conn))}


ROUTES = {"/api/runs": api_runs, "/api/metrics": api_metrics, "/api/evals": api_evals,
          "/api/eval_samples": api_eval_samples, "/api/rollouts": api_rollouts,
          "/api/group": api_group, "/api/steps": api_steps}


# -- the server ---------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = "zeroth-view"

    def do_GET(self):  # the name http.server calls
        url = urlsplit(self.path)
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                raise HttpError(403, "unexpected Host header: open the page at "
                                f"{self.server.url} (other names are refused: DNS rebinding)")
            if url.path in ROUTES:
                self.send_json(200, ROUTES[url.path](self.server, Params(url.query)))
            else:
                self.send_static(url.path)
        except HttpError as e:
            self.send_json(e.status, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer
        except sqlite3.Error as e:
            self.send_json(500, {"error": ledger_error(e)})
        except Exception as e:  # noqa: BLE001 — one bad request must not kill the page
            self.send_json(500, {"error": f"{type(e).__name__}: {e}"})

    def send_json(self, code: int, data: dict) -> None:
        body = json.dumps(queries.finite(data), allow_nan=False).encode("utf-8")
        self.send_body(code, body, "application/json")

    def send_body(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_static(self, path: str) -> None:
        if path in ("/", "/index.html"):
            name = "index.html"
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
        else:
            raise HttpError(404, f"no such page: {path}")
        file = STATIC / name
        if "/" in name or name.startswith(".") or not file.is_file():
            raise HttpError(404, f"no such file: {path}")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self.send_body(200, file.read_bytes(), kind)

    def log_message(self, format, *args):  # quiet: the page polls every few seconds
        pass


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, roots: list[Path], address: tuple[str, int]):
        self.roots = roots
        if ":" in address[0]:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.server_address[0])

    def host_allowed(self, host: str | None) -> bool:
        """Bound to loopback, only requests naming a loopback host are served: a page on
        another site whose name resolves to 127.0.0.1 (DNS rebinding) can't read the ledgers."""
        if not self.loopback:
            return True
        names = ("127.0.0.1", "localhost", "[::1]")
        allowed = {f"{n}:{self.port}" for n in names} | (set(names) if self.port == 80 else set())
        return (host or "").strip().lower() in allowed

    def run_dir(self, run_id: str) -> Path:
        run_dir = find_runs(self.roots).get(run_id)
        if run_dir is None:
            raise HttpError(404, f"no run '{run_id}' — GET /api/runs lists them")
        return run_dir

    def open_run(self, p: Params) -> tuple[str, sqlite3.Connection]:
        run_id = p.str("run", required=True)
        return run_id, queries.connect(self.run_dir(run_id) / LEDGER)


def make_server(paths: list, host: str = "127.0.0.1", port: int = 8766) -> ViewServer:
    """A server over the runs in `paths` (not yet serving); UserError on a bad path, host or port."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (0 = any free port), got {port}")
    roots = resolve_roots(paths)
    try:
        return ViewServer(roots, (host, port))
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise UserError(f"cannot listen on port {port} of {host} ({reason}) — pick another "
                            "--port (0 = any free one)") from None
        raise UserError(f"cannot listen on host {host!r} ({reason}) — give --host an address "
                        "of this machine, e.g. 127.0.0.1 or ::1") from None


def start_in_thread(paths: list, host: str = "127.0.0.1", port: int = 0) -> ViewServer:
    """make_server, serving from a daemon thread; stop with .shutdown() then .server_close()."""
    server = make_server(paths, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="zeroth-view").start()
    return server
