"""Typed values from plain data: a dict (YAML) becomes a Config, field by field, type-checked
against the dataclass annotations; and back to a dict or a YAML file."""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from zeroth.config.schema import Config
from zeroth.errors import UserError

# ---------------------------------------------------------------------------------------------
# Loading, overrides, type checks, value checks, dumping.
#
# Type rules (from the annotations): int takes an int, never a bool or a float (2.0 is refused);
# float takes an int or a float, or a string that parses as one (YAML reads "1e-4" as a string);
# bool takes only true/false; str takes a string; `X | None` also takes null; dict[str, float]
# takes a mapping of string keys to numbers. In an override, a str field keeps the raw text when
# YAML would read it as a number or bool (`run.name=2024` names the run "2024").
# ---------------------------------------------------------------------------------------------

_NONE_TYPE = type(None)
GENERIC_WEIGHTS = {"correct": 1.0, "format": 0.1}  # every task's verifier is also "correct"


def sections() -> dict[str, type]:
    """Section name -> dataclass type, in declared order."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def field_types(section: str) -> dict[str, Any]:
    """Field name -> resolved annotation for one section, in declared order."""
    cls = sections()[section]
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def unknown_key(key: str, valid: list[str], prefix: str = "") -> UserError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    if close:
        return UserError(f"unknown config key {key!r} — did you mean {prefix + close[0]!r}?")
    where = f"of {prefix[:-1]!r}" if prefix else "(sections)"
    return UserError(f"unknown config key {key!r} — valid keys {where}: {', '.join(valid)}")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not _NONE_TYPE]
    if get_origin(tp) is dict:
        return "a mapping of str to float" if get_args(tp)[1] is float else "a mapping"
    if get_origin(tp) is list:
        return "a list"
    if _NONE_TYPE in get_args(tp):
        return f"{type_name(args[0])} or null"
    return getattr(tp, "__name__", str(tp))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp`; return it converted (int -> float etc.)."""
    bad = UserError(
        f"config key {key!r} expects {type_name(tp)}, got {type(value).__name__} {show(value)}"
    )
    args = get_args(tp)
    if _NONE_TYPE in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not _NONE_TYPE]
        return _coerce_plain(key, value, inner, bad)
    return _coerce_plain(key, value, tp, bad)


def _coerce_plain(key: str, value: Any, tp: Any, bad: UserError) -> Any:
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise bad
        return list(value)
    if get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise bad
        out = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise bad
            inner = get_args(tp)[1]
            out[name] = item if inner is Any else coerce(f"{key}.{name}", item, inner)
        return out
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if _is_number(value):
            return float(value)
        raise bad
    if tp is int and _is_number(value) and isinstance(value, int):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise bad


def check_section(name: Any, body: Any) -> dict:
    """Validate a section name and that its body is a mapping; return the body (None -> {})."""
    known = list(sections())
    if name not in known:
        raise unknown_key(str(name), known)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise UserError(
            f"config section {name!r} must be a mapping of field: value, got "
            f"{type(body).__name__} {show(body)} — write e.g. '{name}:' then indented fields"
        )
    return body


def config_from_dict(d: dict) -> Config:
    """Build a Config from a nested dict, strictly: unknown keys and wrong types raise UserError.

    Missing sections and fields keep their defaults. Value ranges are checked by `validate`.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(
            f"a config must be a mapping of section -> field -> value, got {type(d).__name__}"
        )
    built = {}
    for name, body in d.items():
        body = check_section(name, body)
        types = field_types(name)
        values = {}
        for key, value in body.items():
            if key not in types:
                raise unknown_key(f"{name}.{key}", list(types), prefix=f"{name}.")
            values[key] = coerce(f"{name}.{key}", value, types[key])
        built[name] = sections()[name](**values)
    return Config(**built)


def config_to_dict(cfg: Config) -> dict:
    """A plain nested dict (section -> field -> value) of `cfg`."""
    return asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML (sections and fields in declared order), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
