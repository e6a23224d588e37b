"""`zeroth metrics`: export runs' metrics from their ledgers to TensorBoard, W&B or a CSV file.

    zeroth metrics RUN [RUN ...] --tensorboard DIR      DIR/<run>/ event files (tensorboardX)
    zeroth metrics RUN [RUN ...] --wandb PROJECT        one W&B run per run (needs `wandb`)
    zeroth metrics RUN [RUN ...] --csv FILE             one row per (run, phase, step)
    ... --follow                                        keep exporting while the run runs

The ledger (runs/<name>/ledger.sqlite) is opened read-only, so a run that is still writing can
be exported, and followed: every metrics row logged since the last look (by its row id, so a
step logged again — after a resume, or a second log call for one step — is exported again) is
picked up until the run is no longer alive — finished, or stopped (killed, interrupted,
crashed: its lock is free and it has no summary.json; zeroth/pipeline/runstate.py) — or
Ctrl-C; a stopped run is named with where it stopped and the command that resumes it. Scalars are tagged
`<phase>/<metric>` at their steps; evaluations `eval/<stage>/<metric>` (`eval_start` ->
`eval/start/pass@1`), each value once: `pass1` is the same number as `pass@1`, and the settings
`k` and `problems` are left out.

Steps: TensorBoard keeps each phase's own step and puts evaluations at the RL step they were
taken (0 before RL). W&B needs one increasing step per run, so there every phase continues
where the previous one ended (pretrain 1..20, then rl 21..24), and `<phase>/step` holds the
phase's own step; W&B keeps no value logged at a step below one it has seen, so a step redone
after a resume reaches W&B only as far as that allows. TensorBoard allows only letters, digits
and `_-/.` in tags: `pass@1` is written as `pass_1`. The reading helpers here are shared with
`zeroth plot`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

from zeroth.errors import UserError
from zeroth.pipeline.ledger import EVAL_PREFIX, connect_readonly, phase_kind
from zeroth.pipeline.ledger import merge_metrics as merge
from zeroth.pipeline.runstate import alive, run_state

MARKER = ".zeroth-export"  # marks a TensorBoard folder this command wrote (safe to replace)

# -- reading runs (also used by zeroth.cli.plot) ---------------------------------------------------


def run_dir(source: str | Path, wait: bool = False) -> Path:
    """The run directory `source` names, checked: it must hold a ledger (with `wait`, a run
    directory whose ledger is not written yet is accepted too)."""
    path = Path(source)
    if path.is_file() and path.name == "ledger.sqlite":
        path = path.parent
    if not path.exists():
        raise UserError(f"'{source}' does not exist — give a run directory such as runs/<name>")
    if not path.is_dir():
        raise UserError(f"'{source}' is not a run directory — give runs/<name>")
    if (path / "ledger.sqlite").is_file():
        return path
    if (path / "config.yaml").is_file():
        if wait:
            return path
        raise UserError(f"'{source}' has no ledger yet (ledger.sqlite): the run has not logged "
                        "anything — wait for its first step, or add --follow")
    inner = sorted(p.name for p in path.iterdir() if (p / "ledger.sqlite").is_file())
    if inner:
        shown = " ".join(str(path / n) for n in inner[:3])
        raise UserError(f"'{source}' holds runs, not a run — name them, e.g. {shown}")
    raise UserError(f"'{source}' is not a zeroth run directory (no ledger.sqlite) — give "
                    "runs/<name> of a `zeroth run`")


def unique_names(dirs: list[Path]) -> list[str]:
    """Each run's folder name, made unique with -2, -3 when two folders share a name."""
    names: list[str] = []
    for d in dirs:
        base = Path(os.path.abspath(d)).name  # a symlink keeps its own name
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}-{i}"
        names.append(name)
    return names


def read_raw(path: Path, after: int = 0) -> list[tuple[int, str, int, dict]]:
    """The run's metrics rows with an id above `after`, as (id, phase, step, data) in id order
    (`[]` when it has no ledger yet), read-only. Each log_metrics call is one row."""
    file = Path(path) / "ledger.sqlite"
    if not file.is_file():
        return []
    conn = connect_readonly(file)
    try:
        rows = conn.execute("SELECT id, phase, step, data FROM metrics WHERE id > ? ORDER BY id",
                            (int(after),)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the run is creating its ledger right now
            return []
        raise UserError(f"cannot read {file} ({exc}) — is it a zeroth ledger?") from None
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot read {file} ({exc}) — is it a zeroth ledger?") from None
    finally:
        conn.close()
    return [(i, phase, step, json.loads(data)) for i, phase, step, data in rows]


def read_metrics(path: Path) -> list[dict]:
    """The run's merged per-step metrics (`[]` when it has no ledger yet), read-only."""
    return merge(read_raw(path))


def is_eval(phase: str) -> bool:
    return phase.startswith(EVAL_PREFIX)


def eval_stage(phase: str) -> str:
    """`eval_start` -> `start`, `eval_rl` -> `rl`."""
    return phase[len(EVAL_PREFIX):] if is_eval(phase) else phase


def number(value) -> float | None:
    """A metric value as a float, or None when it is not a number (NaN and inf stay)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


EVAL_SETTINGS = ("k", "problems")  # logged with an evaluation's numbers; not results


def exported(row: dict) -> dict:
    """The row as exported: an evaluation's values once each (`pass1` is `pass@1` under its
    older name; kept as `pass@1` when only it is there) and without its settings."""
    if not is_eval(row["phase"]):
        return row
    out = {k: v for k, v in row.items() if k not in EVAL_SETTINGS and k != "pass1"}
    if "pass1" in row and "pass@1" not in row:
        out["pass@1"] = row["pass1"]
    return out


def tb_tag(tag: str) -> str:
    """A tag TensorBoard accepts: letters, digits and `_-/.`, others `_` (`pass@1` -> `pass_1`)."""
    return re.sub(r"[^-/\w.]", "_", tag)


def offsets(rows: list[dict], counts=lambda phase: True) -> dict[str, int]:
    """Where each phase starts on one running step axis: phases in ledger order, each counted
    one (`counts(phase)`) advancing the axis by its last step. An evaluation phase sits at the
    axis position reached when it was taken."""
    last: dict[str, int] = {}
    for row in rows:
        last[row["phase"]] = max(last.get(row["phase"], 0), int(row["step"]))
    out, total = {}, 0
    for phase, end in last.items():
        out[phase] = total
        if not is_eval(phase) and counts(phase):
            total += end
    return out


def rl_offsets(rows: list[dict]) -> dict[str, int]:
    """Offsets on the RL-step axis: RL stages one after another, evaluations at the RL step."""
    return offsets(rows, lambda phase: phase_kind(phase) == "rl")


def sample_rollouts(path: Path, phase: str, step: int, n: int) -> list[dict]:
    """The first `n` rollouts logged at (phase, step), read-only, without loading the rest."""
    file = Path(path) / "ledger.sqlite"
    if n <= 0 or not file.is_file():
        return []
    conn = connect_readonly(file)
    try:
        rows = conn.execute("SELECT id, prompt, completion, reward, answer FROM rollouts WHERE "
                            "phase = ? AND step = ? ORDER BY id LIMIT ?",
                            (phase, int(step), int(n))).fetchall()
    finally:
        conn.close()
    return [dict(zip(("id", "prompt", "completion", "reward", "answer"), r, strict=True))
            for r in rows]


class Source:
    """One run being exported: its directory, name, every row read so far (merged per step),
    and the id of the last metrics row exported."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self.rows: list[dict] = []
        self.last_id = 0
        self.exported = 0  # rows handed to the exporter
        self.sampled: dict[tuple[str, int], int] = {}  # (phase, step): its first rollout's id

    def poll(self) -> list[dict]:
        """Read the ledger again; return the (phase, step) rows logged since the last poll,
        each merged from the calls logged since then, and remember the last row id. A step
        logged again (a resumed run redoes the steps after its checkpoint) comes again."""
        raw = read_raw(self.path)
        self.rows = merge(raw)
        new = [r for r in raw if r[0] > self.last_id]
        if new:
            self.last_id = new[-1][0]
        return merge(new)

    def state(self) -> dict:
        """The run's state now: running, finished, stopped or starting
        (zeroth.pipeline.runstate)."""
        return run_state(self.path)

    def new_samples(self, phase: str, step: int, n: int) -> list[dict]:
        """The first `n` rollouts of (phase, step), unless they were handed out already (a
        second log call for a step); a step redone after a resume has new rollouts."""
        samples = [] if is_eval(phase) else sample_rollouts(self.path, phase, step, n)
        if not samples or self.sampled.get((phase, step)) == samples[0]["id"]:
            return []
        self.sampled[(phase, step)] = samples[0]["id"]
        return samples

    def scalars(self, row: dict) -> dict[str, float]:
        return {k: v for k, v in ((k, number(v)) for k, v in exported(row).items()
                                  if k not in ("phase", "step")) if v is not None}


# -- exporters ---------------------------------------------------------------------------------


def _import_tensorboardx():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise UserError("TensorBoard export needs tensorboardX — pip install tensorboardX "
                        "(or pip install 'zeroth[tensorboard]')") from None
    return SummaryWriter


def _check_folder(folder: Path) -> None:
    """Refuse to replace a folder this command did not write."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{folder}' is a file — choose another --tensorboard folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise UserError(f"'{folder}' exists and is not an earlier `zeroth metrics` export (no "
                        f"{MARKER} file) — move it away or choose another --tensorboard folder")


def _fresh_folder(folder: Path, source: Path) -> None:
    """Replace an earlier export of this run by an empty folder (moved aside, then deleted)."""
    if folder.is_dir():
        trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(f"{source.resolve()}\n", encoding="utf-8")


def _rollout_text(samples: list[dict]) -> str:
    parts = []
    for s in samples:
        parts.append(f"**reward** {s['reward']} · **gold** {s['answer']}\n\n"
                     f"```\n{s['prompt']}\n---\n{s['completion']}\n```")
    return "\n\n".join(parts)


class TensorBoard:
    """One event-file folder per run under `root`, rewritten afresh on each export."""

    def __init__(self, root: str, sources: list[Source], samples: int):
        writer_class = _import_tensorboardx()
        self.root, self.samples = Path(root), samples
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--tensorboard {root} is a file — give a folder")
        folders = [self.root / s.name for s in sources]
        for folder in folders:
            _check_folder(folder)
        self.writers = {}
        for s, folder in zip(sources, folders, strict=True):
            _fresh_folder(folder, s.path)
            self.writers[s.name] = writer_class(logdir=str(folder), flush_secs=5)

    def export(self, source: Source, rows: list[dict]) -> None:
        writer, at = self.writers[source.name], rl_offsets(source.rows)
        for row in rows:
            phase, step = row["phase"], row["step"]
            prefix, x = phase, step
            if is_eval(phase):
                prefix, x = f"eval/{eval_stage(phase)}", at.get(phase, 0) + step
            for key, value in source.scalars(row).items():
                writer.add_scalar(tb_tag(f"{prefix}/{key}"), value, x)
            samples = source.new_samples(phase, step, self.samples)
            if samples:
                writer.add_text(f"{phase}/rollouts", _rollout_text(samples), step)
        writer.flush()

    def where(self, source: Source) -> str:
        return str(self.root / source.name)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("install wandb (pip install wandb) to export to Weights & Biases") \
            from None
    return wandb


def run_config(path: Path) -> dict:
    """The run's config.yaml as a dict ({} when missing or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((Path(path) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def wandb_id(path: Path, name: str) -> str:
    """A W&B run id that stays the same for one run: from its config file's contents and
    write time (config.yaml is written once, when the run is created; moving the folder keeps
    both), or its path when it has none."""
    config = Path(path) / "config.yaml"
    if config.is_file():
        key = config.read_bytes() + str(config.stat().st_mtime_ns).encode()
    else:
        key = str(Path(path).resolve()).encode()
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:40]
    return f"{safe}-{hashlib.sha1(key).hexdigest()[:12]}"


class WandB:
    """One W&B run per zeroth run; every phase on one increasing step axis."""

    def __init__(self, project: str, sources: list[Source], samples: int,
                 entity: str | None = None, name: str | None = None):
        self.wandb, self.samples, self.project = _import_wandb(), samples, project
        self.runs, self.tables = {}, {}
        for s in sources:
            self.runs[s.name] = self.wandb.init(
                project=project, entity=entity, name=name or s.name, config=run_config(s.path),
                resume="allow", id=wandb_id(s.path, s.name))
            self.tables[s.name] = []

    def export(self, source: Source, rows: list[dict]) -> None:
        at = offsets(source.rows)
        batch: dict = {}
        batch_step = None
        for row in rows:
            phase, step = row["phase"], row["step"]
            global_step = at.get(phase, 0) + step
            if batch and global_step != batch_step:
                self.runs[source.name].log(batch, step=batch_step)
                batch = {}
            batch_step = global_step
            prefix = f"eval/{eval_stage(phase)}" if is_eval(phase) else phase
            batch.update({f"{prefix}/{k}": v for k, v in source.scalars(row).items()})
            if not is_eval(phase):
                batch[f"{phase}/step"] = step
                samples = source.new_samples(phase, step, self.samples)
                table = self.tables[source.name]
                if samples:  # a redone step's rollouts replace its earlier ones
                    table[:] = [t for t in table if (t[0], t[1]) != (phase, step)]
                table += [[phase, step, s["prompt"], s["completion"], s["reward"], s["answer"]]
                          for s in samples]
        if batch:
            self.runs[source.name].log(batch, step=batch_step)

    def where(self, source: Source) -> str:
        return f"W&B project {self.project}, run {source.name}"

    def close(self) -> None:
        table_class = getattr(self.wandb, "Table", None)
        for name, run in self.runs.items():
            if self.tables[name] and table_class is not None:
                columns = ["phase", "step", "prompt", "completion", "reward", "gold"]
                run.log({"rollouts": table_class(columns=columns, data=self.tables[name])})
            run.finish()


def _cell(value) -> str | float | int:
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return value
    return json.dumps(value)


class Csv:
    """One file, one row per (run, phase, step), columns the union of the metrics; the whole
    file is rewritten (atomically) from each run's current rows whenever new rows arrive, so
    a step logged again replaces its row."""

    def __init__(self, file: str, sources: list[Source]):
        self.file, self.shown = Path(file).resolve(), file  # a symlink: the file it names
        if self.file.is_dir():
            raise UserError(f"--csv {file} is a folder — give a file name, e.g. metrics.csv")
        if self.file.exists() and not self.file.is_file():
            raise UserError(f"--csv {file} is not a regular file (it is replaced atomically) — "
                            "give a file name, e.g. metrics.csv")
        self.runs: dict[str, list[dict]] = {s.name: [] for s in sources}

    def export(self, source: Source, rows: list[dict]) -> None:
        self.runs[source.name] = [{"run": source.name, **exported(r)} for r in source.rows]
        self._write()

    def _write(self) -> None:
        rows = [r for run_rows in self.runs.values() for r in run_rows]
        columns = ["run", "phase", "step"]
        for row in rows:
            columns += [k for k in row if k not in columns]
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows([_cell(r.get(c)) for c in columns] for r in rows)
            os.replace(tmp, self.file)
        finally:
            tmp.unlink(missing_ok=True)

    def where(self, source: Source) -> str:
        return str(self.shown)

    def close(self) -> None:
        if not self.file.exists():
            self._write()  # a header at least


# -- the command -------------------------------------------------------------------------------


def add_parser(subparsers):
    p = subparsers.add_parser(
        "metrics", help="export runs' metrics to TensorBoard, W&B or CSV",
        description="Export the metrics in runs' ledgers: TensorBoard event files, a Weights & "
        "Biases run, or a CSV file. With --follow, keep exporting new steps of a running run "
        "until it finishes or stops (or Ctrl-C).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--tensorboard", metavar="DIR",
                        help="write DIR/<run>/ event files (view: tensorboard --logdir DIR)")
    target.add_argument("--wandb", metavar="PROJECT", help="log to this W&B project")
    target.add_argument("--csv", metavar="FILE", help="write one CSV file")
    p.add_argument("--follow", action="store_true",
                   help="keep exporting new steps until the run finishes or stops (Ctrl-C "
                   "stops following)")
    p.add_argument("--entity", metavar="E", help="W&B entity (team or user)")
    p.add_argument("--name", metavar="N", help="W&B run name (default: the run's folder name)")
    p.add_argument("--samples", type=int, default=2, metavar="N",
                   help="rollouts per step shown as text (TensorBoard) or in a table (W&B); "
                   "0: none (default 2)")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between looks at the ledger with --follow (default 5)")
    return p


def _exporter(ns, sources: list[Source]):
    if ns.wandb is None and (ns.entity or ns.name):
        raise UserError("--entity and --name are W&B settings — use them with --wandb PROJECT")
    if ns.name and len(sources) > 1:
        raise UserError("--name names one W&B run — give one RUN, or leave --name out")
    if ns.tensorboard is not None:
        return TensorBoard(ns.tensorboard, sources, ns.samples)
    if ns.wandb is not None:
        return WandB(ns.wandb, sources, ns.samples, ns.entity, ns.name)
    return Csv(ns.csv, sources)


def export_once(sources: list[Source], exporter, report=None) -> None:
    """Export every row each run has logged since the last export."""
    for s in sources:
        new = s.poll()
        if new:
            exporter.export(s, new)
            s.exported += len(new)
            if report is not None:
                last = {r["phase"]: r["step"] for r in new if not is_eval(r["phase"])}
                steps = ", ".join(f"{p} {c}" for p, c in last.items())
                report(f"{s.name}: +{len(new)} rows (now at {steps or 'evaluations'})")


def said(state: dict) -> str:
    """A run state's line, with the command that resumes a stopped run."""
    hint = f" — resume with `{state['resume']}`" if state["resume"] else ""
    return f"{state['text']}{hint}"


def follow(sources: list[Source], exporter, interval: float, report=None) -> list[dict]:
    """Export new rows every `interval` seconds until no run is alive (each one finished or
    stopped); report each run's end once, when it comes. Returns the runs' last states."""
    gone: set[str] = set()  # the runs whose end was reported (a resumed one comes back)
    while True:
        states = [s.state() for s in sources]  # before reading: no row is missed
        export_once(sources, exporter, report)
        for s, state in zip(sources, states, strict=True):
            if alive(state):
                gone.discard(s.name)
            elif s.name not in gone:
                gone.add(s.name)
                if report is not None:
                    report(f"run {s.name} {said(state)}")
        if not any(alive(state) for state in states):
            return states
        time.sleep(interval)


def _check_args(ns) -> None:
    if ns.samples < 0:
        raise UserError(f"--samples must be 0 or more, got {ns.samples}")
    if not (ns.interval > 0 and math.isfinite(ns.interval)):
        raise UserError(f"--interval must be a positive number of seconds, got {ns.interval}")


def run(ns) -> int:
    _check_args(ns)
    dirs = [run_dir(s, wait=ns.follow) for s in [*ns.runs, *getattr(ns, "args", [])]]
    sources = [Source(d, n) for d, n in zip(dirs, unique_names(dirs), strict=True)]
    if not ns.follow:
        empty = [s.path for s in sources if not read_metrics(s.path)]
        if empty:
            raise UserError(f"{empty[0]} has no metrics yet — wait for its first step, or add "
                            "--follow to export while it runs")
    exporter, code = _exporter(ns, sources), 0
    try:
        if ns.follow:
            print(f"following {', '.join(str(s.path) for s in sources)} (Ctrl-C stops)",
                  flush=True)
            follow(sources, exporter, ns.interval, lambda m: print(m, flush=True))
        else:
            export_once(sources, exporter)
    except KeyboardInterrupt:
        if ns.follow:  # Ctrl-C is how following ends before the run does
            print("stopped following")
        else:
            print("interrupted: the export may be incomplete — run the command again")
            code = 130
    finally:
        exporter.close()
    for s in sources:
        print(f"{s.path}: {s.exported} rows -> {exporter.where(s)} · {said(s.state())}")
    return code
