"""Typed configuration: dataclasses whose defaults are the paper's recipe, overridable from a YAML or TOML file and
from the command line (defaults < stage presets < file < command line). Unknown keys and ill-typed values are
errors that name the key."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from .errors import UserError


def _base_type(tp):
    """int | None -> (int, True); Literal handled as str."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(cls, name: str, value: Any):
    """Convert a value from a file or the command line to the field's declared type, or raise UserError."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        valid = [f.name for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(name, valid, n=1)
        raise UserError(f"unknown config key {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    tp, optional = _base_type(hints[name])
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise UserError(f"config key {name!r} cannot be empty")
    try:
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
    except (TypeError, ValueError):
        raise UserError(f"config key {name!r}: expected {tp.__name__}, got {value!r}") from None
    return value


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
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{path}: key {nested[0]!r} is a table; config keys are flat (e.g. lr = 0.01)")
    return data


def build(cls, overrides: dict | None = None, file: str | Path | None = None, presets: dict | None = None):
    """cls() with presets, then the file's values, then explicit overrides; every value type-checked."""
    values: dict[str, Any] = {}
    for source in (presets or {}, read_file(file) if file else {}, overrides or {}):
        for k, v in source.items():
            if v is None:  # "not given": the lower layer's value stands
                continue
            values[k.replace("-", "_")] = coerce(cls, k.replace("-", "_"), v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid config: {e}") from None


def add_arguments(parser: argparse.ArgumentParser, cls, help: dict[str, str] | None = None) -> None:
    """One --option per field, defaulting to 'not given' (None) so that only explicit values override."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = (help or {}).get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{text} (default: {default})" if text else f"default: {default}"
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=tp.__name__.upper(), help=text)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
