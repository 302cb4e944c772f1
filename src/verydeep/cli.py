"""The `verydeep` command: a table of commands, each a typed config and the one library function that runs it, so
the Python API is the command line (`verydeep evaluate --weights w --data d` is
`evaluate.run(EvalConfig(weights=["w"], data="d"))`). Options are generated from the configs by one mechanism
(config.add_arguments): the same idea has the same flag in every command, and every command reads --config FILE
(TOML, YAML or JSON; the command line wins). User mistakes print one line and exit with status 2."""
from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass

from . import config
from .errors import UserError
from .utils import bound_kernel_caches, keep_freed_memory


@dataclass(frozen=True)
class Command:
    name: str      # "train", or a group and its command: "localize train"
    target: str    # "module:ConfigClass:function"
    help: str


COMMANDS = [
    Command("info", "info:InfoConfig:run", "Tables 1-2: layers, parameters, multiply-adds, receptive fields"),
    Command("predict", "predict:PredictConfig:predict", "the top classes of images (the paper's dense protocol)"),
    Command("evaluate", "evaluate:EvalConfig:run", "the paper's test protocols over a dataset: error tables, fusion"),
    Command("explain", "predict:ExplainConfig:explain", "PNG of an image with its top class's dense score map"),
    Command("export", "export:ExportConfig:run", "a net to ONNX (checked with ONNX Runtime) or verydeep's format"),
    Command("train", "train:TrainConfig:train", "train with the paper's recipe (torchrun for several processes)"),
    Command("plot", "metrics:PlotConfig:plot_run", "PNG curves of a run: loss, top-1/top-5 error, learning rate"),
    Command("features", "features:FeaturesConfig:run", "very deep features (section 7): dense, pooled, flipped"),
    Command("transfer", "transfer:TransferConfig:run", "linear SVMs on features: class recall (Caltech) or mAP (VOC)"),
    Command("localize train", "localize:LocTrainConfig:train_run", "fine-tune a box-regression net (Appendix A)"),
    Command("localize evaluate", "localize:LocEvalConfig:evaluate_run", "protocol 1 (centre crop) or 2 (dense)"),
    Command("localize predict", "localize:LocPredictConfig:predict_run", "the top classes' boxes on an image (PNG)"),
    Command("data stats", "data.stats:StatsConfig:run", "mean RGB and colour eigen-statistics of a training set"),
    Command("data pack", "data.pack:PackConfig:run", "a dataset as WebDataset-style tar shards"),
    Command("data fashion-mnist", "data.fashion_mnist:FashionConfig:run", "find or download Fashion-MNIST"),
    Command("data mini-ilsvrc", "mini:MiniCommand:run", "the miniature ILSVRC (classes and boxes) from Fashion-MNIST"),
    Command("reproduce", "reproduce:StudyConfig:run", "the paper's experiments in miniature: REPORT.md and plots"),
    Command("bench", "bench:BenchConfig:run", "speed against the machine's GEMM rate and the peers"),
]
GROUPS = {"localize": "localisation (Appendix A): train, evaluate, predict",
          "data": "datasets: colour statistics, tar shards, Fashion-MNIST, mini-ILSVRC"}


def resolve(cmd: Command):
    """(config class, function) of a command."""
    module, cls, fn = cmd.target.split(":")
    m = importlib.import_module(f"verydeep.{module}")
    return getattr(m, cls), getattr(m, fn)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="verydeep", description="Very deep ConvNets (VGG): the whole paper.")
    p.add_argument("--version", action="version", version=f"verydeep {__version__}")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict = {}
    for cmd in COMMANDS:
        group, _, leaf = cmd.name.rpartition(" ")
        parent = top
        if group:
            if group not in groups:
                g = top.add_parser(group, help=GROUPS[group], description=GROUPS[group])
                groups[group] = g.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
            parent = groups[group]
        cls, fn = resolve(cmd)
        s = parent.add_parser(leaf, help=cmd.help, description=inspect.cleandoc(fn.__doc__ or cmd.help),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--config", help="a .toml, .yaml or .json file of these options (the command line wins)")
        config.add_arguments(s, cls)
        s.set_defaults(_command=cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd: Command = args._command
    cls, fn = resolve(cmd)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    keep_freed_memory()  # every command allocates VGG activations again and again (utils.py)
    bound_kernel_caches()  # before the first convolution (utils.py)
    try:
        code = _run(cmd, lambda: fn(config.build(cls, config.given(args, cls), args.config)))
    except BaseException as e:
        if not _joined_process_group():
            raise
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else 1
        else:
            traceback.print_exc()
            code = 1
    if _joined_process_group():
        sys.modules["verydeep.distributed"].leave(code)  # never returns (distributed.leave says why)
    return code


def _joined_process_group() -> bool:
    d = sys.modules.get("verydeep.distributed")  # not even imported: no group was joined
    return d is not None and d.joined


def _run(cmd: Command, command) -> int:
    """The command's exit status: a user's mistake (a bad option value too) is one line and status 2."""
    from .transforms import BadImage

    try:
        result = command()
    except (UserError, BadImage) as e:
        print(f"verydeep {cmd.name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2 if isinstance(result, dict) and result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
