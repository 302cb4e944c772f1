"""One way to do each thing: every command is a typed config generated into the command line by one mechanism, so
the same idea has the same flag everywhere, every command reads a config file, every option is described, and the
package has no import cycles."""
import argparse
import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from verydeep import config
from verydeep.cli import COMMANDS, build_parser, main, resolve
from verydeep.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "verydeep"


def import_graph() -> dict[str, set[str]]:
    """verydeep's modules and the verydeep modules each imports, at any level (lazy imports included)."""
    def name(p: Path) -> str:
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + [node.module] if node.module else base) if node.level else node.module
                deps |= {d for d in [target, *(f"{target}.{a.name}" for a in node.names)] if d in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[m] = deps - {m}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def subparsers(parser):
    """(command name, parser) of every leaf command."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                leaves = subparsers(sub)
                out += [(f"{name} {n}", p) for n, p in leaves] if leaves else [(name, sub)]
    return out


def test_every_option_of_every_command_is_described():
    commands = subparsers(build_parser())
    assert {n for n, _ in commands} == {c.name for c in COMMANDS}
    for name, p in commands:
        for a in p._actions:
            if a.option_strings and a.dest not in ("help",):
                assert a.help and len(a.help) > 8, f"verydeep {name} {a.option_strings[0]} has no description"


def test_a_flag_means_the_same_in_every_command():
    seen: dict[str, tuple] = {}
    for name, p in subparsers(build_parser()):
        for a in p._actions:
            for flag in a.option_strings:
                kind = (type(a).__name__, a.metavar, tuple(a.choices or ()))
                if flag in seen:
                    assert seen[flag][0] == kind, f"{flag}: {seen[flag][1]} has {seen[flag][0]}, {name} has {kind}"
                seen.setdefault(flag, (kind, name))
    # one spelling per idea: the test scales, the crop, JSON output, the device, the precision
    for old in ("--scale", "--crop-size", "--no-compile-only", "--test-scale", "--checkpoint"):
        assert old not in seen
    assert seen["--json"][0][0] == "_StoreAction"  # a path everywhere ("-": standard output), not a switch
    assert seen["--precision"][0][2] == ("auto", "fp32", "bf16", "int8")


def sample_values(cls, f):
    """Two valid values for field f of a command's config (a file's, and the command line's)."""
    tp, _, choices, elem = config._unwrap(typing.get_type_hints(cls)[f.name])
    if choices:
        return choices[-1], choices[0]
    return {bool: (True, False), int: (3, 4), float: (0.25, 0.5), str: ("x", "y"),
            list: ([7], [8]) if elem is int else (["x"], ["y"])}[tp]


REQUIRED = {"train": {"data": "d"}}  # what a config must hold to be built


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_builds_from_a_config_file_and_the_command_line_wins(tmp_path, command):
    cls, _ = resolve(command)
    fields = [f for f in dataclasses.fields(cls) if f.name not in ("precision", "device", "only", "stage", "init",
                                                                   "protocol", "graph", "aggregate", "mode",
                                                                   "layers", "shard_size", "train_scale")]
    f = fields[-1]
    in_file, on_line = sample_values(cls, f)
    (tmp_path / "c.json").write_text(json.dumps({**REQUIRED.get(command.name, {}), f.name: in_file}))
    assert getattr(config.build(cls, {}, tmp_path / "c.json"), f.name) == in_file
    assert getattr(config.build(cls, {f.name: on_line}, tmp_path / "c.json"), f.name) == on_line
    with pytest.raises(UserError, match="unknown option 'no_such_option'"):
        (tmp_path / "bad.json").write_text(json.dumps({"no_such_option": 1}))
        config.build(cls, {}, tmp_path / "bad.json")


def test_commands_run_from_a_config_file(tmp_path, capsys):
    (tmp_path / "info.toml").write_text('name = "C"\nsize = 256\n')
    assert main(["info", "--config", str(tmp_path / "info.toml")]) == 0
    assert "at 256x256 input" in capsys.readouterr().out
    (tmp_path / "x.yaml").write_text(f"model: A\ncrop: 64\nwidth: 0.0625\nfc_width: 16\nnum_classes: 3\n"
                                     f"out: {tmp_path / 'a.safetensors'}\n")
    assert main(["export", "--config", str(tmp_path / "x.yaml")]) == 0
    import verydeep as vd
    assert vd.load(tmp_path / "a.safetensors").config.num_classes == 3


def test_a_runs_own_config_json_is_a_config_file(tmp_path):
    from verydeep.train import TrainConfig

    record = {"data": "d", "lr": 0.02, "max_epochs": 35, "_provenance": {"commit": "abc", "torch": "2.13.0"}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    cfg = config.build(TrainConfig, {"max_epochs": 60}, tmp_path / "config.json")
    assert (cfg.data, cfg.lr, cfg.max_epochs) == ("d", 0.02, 60)
    (tmp_path / "bad.json").write_text(json.dumps({"data": "d", "provenance": {"commit": "abc"}}))
    with pytest.raises(UserError, match="is a table"):
        config.build(TrainConfig, {}, tmp_path / "bad.json")


def test_lists_are_comma_separated_or_repeated():
    from verydeep.evaluate import EvalConfig

    cfg = config.build(EvalConfig, {"weights": ["a.pth", "b,c.pth"], "train_scale": "256,512"})
    assert cfg.weights == ["a.pth", "b,c.pth"] and cfg.train_scale == [256, 512]
    with pytest.raises(UserError, match="option 'train_scale': expected a list of int"):
        config.build(EvalConfig, {"train_scale": "256,big"})
