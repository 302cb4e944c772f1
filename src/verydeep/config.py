"""Typed configuration: every command is a dataclass whose defaults are the paper's recipe, overridable from a YAML,
TOML or JSON file and from the command line (defaults < presets < file < command line). The command line is
generated from the dataclass by one mechanism (`add_arguments`): one flag per field, named after it, typed by its
annotation, described by the comment beside it. Unknown keys and ill-typed values are errors that name the key."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from .errors import UserError


def positional(nargs: str | None = None, **kw):
    """A field given on the command line without its flag (`verydeep predict IMAGE ...`)."""
    return dataclasses.field(metadata={"positional": nargs or "?"}, **kw)


def repeated(**kw):
    """A list field given by repeating its flag (`--weights a.pth --weights b.pth`)."""
    return dataclasses.field(default_factory=list, metadata={"repeat": True}, **kw)


def _unwrap(tp):
    """(base type, optional, literal choices, list element type)."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin is Literal:
        return str, optional, tuple(typing.get_args(tp)), None
    if origin in (list, tuple):
        (elem, *_) = typing.get_args(tp) or (str,)
        return list, optional, None, elem
    return tp, optional, None, None


def _scalar(tp, name: str, value: Any):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float, os.PathLike)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    return value


def coerce(cls, name: str, value: Any):
    """Convert a value from a file or the command line to the field's declared type, or raise UserError."""
    hints = typing.get_type_hints(cls)
    if name not in hints or name not in {f.name for f in dataclasses.fields(cls)}:
        valid = [f.name for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(name, valid, n=1)
        raise UserError(f"unknown option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    tp, optional, choices, elem = _unwrap(hints[name])
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise UserError(f"option {name!r} cannot be empty")
    try:
        if tp is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            if not _field(cls, name).metadata.get("repeat"):  # "256,384,512" on the command line
                items = [p for v in items for p in (str(v).split(",") if isinstance(v, str) else [v]) if p != ""]
            return [_scalar(elem, name, v) for v in items]
        out = _scalar(tp, name, value)
    except (TypeError, ValueError):
        what = f"a list of {elem.__name__}" if tp is list else tp.__name__
        raise UserError(f"option {name!r}: expected {what}, got {value!r}") from None
    if choices and out not in choices:
        raise UserError(f"option {name!r}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


def _field(cls, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def read_file(path: str | Path) -> dict:
    """A flat mapping from a .toml, .yaml/.yml or .json file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"{path}: config files are .toml, .yaml or .json")
    except UserError:
        raise
    except Exception as e:  # parse errors of the three formats
        raise UserError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    # keys starting with "_" are records, not options: a run's config.json (its `_provenance`) is a config file too,
    # e.g. to train a run again with a raised epoch cap
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{path}: key {nested[0]!r} is a table; config keys are flat (e.g. lr = 0.01)")
    return data


def build(cls, overrides: dict | None = None, file: str | Path | None = None, presets: dict | None = None):
    """cls() with presets, then the file's values, then explicit overrides; every value type-checked. A class may
    define `presets(given) -> dict` (a classmethod): values that follow from what was given (the paper's rules)."""
    layers = [read_file(file) if file else {}, overrides or {}]
    values: dict[str, Any] = {}
    auto = {}
    if hasattr(cls, "presets"):
        given = {k.replace("-", "_"): v for layer in layers for k, v in layer.items() if v is not None}
        auto = cls.presets({k: coerce(cls, k, v) for k, v in given.items()})
    for source in (auto, presets or {}, *layers):
        for k, v in source.items():
            if v is None:  # "not given": the lower layer's value stands
                continue
            values[k.replace("-", "_")] = coerce(cls, k.replace("-", "_"), v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"invalid options: {e}") from None


@lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """Each field's description: the comment beside it in the class's source (and the lines of comment after)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        last = None
        for line in lines:
            m = re.match(r"^\s+(\w+)\s*:\s*[^#]*?(?:#\s*(.*))?$", line)
            if m and not line.strip().startswith(("#", "def ", "@")):
                last = m.group(1)
                out[last] = (m.group(2) or "").strip()
                continue
            c = re.match(r"^\s+#\s*(.*)$", line)
            if c and last and out.get(last):
                out[last] += " " + c.group(1).strip()
            else:
                last = None
    return out


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One argument per field, defaulting to 'not given' (None) so that only explicit values override: --name-with-
    dashes for options, bare for positional fields; choices from Literal types; lists comma-separated or repeated."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("hidden"):
            continue
        tp, _, choices, elem = _unwrap(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = helps.get(f.name, "")
        if default not in (None, [], "") and not f.metadata.get("positional"):
            text = f"{text} (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        text = text.replace("%", "%%").strip()
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs=f.metadata["positional"], default=None, help=text,
                                metavar=f.name.upper())
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.metadata.get("repeat"):
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=text + " (repeat the flag)",
                                metavar=(elem or str).__name__.upper())
        elif choices:
            parser.add_argument(flag, dest=f.name, default=None, choices=choices, help=text)
        else:
            meta = f"{(elem or str).__name__.upper()},..." if tp is list else getattr(tp, "__name__", "VALUE").upper()
            parser.add_argument(flag, dest=f.name, default=None, metavar=meta, help=text)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
