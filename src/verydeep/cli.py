"""The `verydeep` command. Each subcommand is a thin layer over the library; user mistakes print one line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError

# Table 2 of the paper, millions of parameters, for `verydeep info`.
PAPER_PARAMS_M = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
PAPER_MACS_G = {"A": 7.61, "B": 11.31, "C": 11.77, "D": 15.47, "E": 19.63}


def _model_options(args) -> dict:
    opts = {}
    for key in ("width", "fc_width", "crop_size", "in_channels", "num_classes"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=float, help="width multiplier of every conv layer (default 1)")
    p.add_argument("--fc-width", type=int, help="width of fc6/fc7 (default 4096)")
    p.add_argument("--crop-size", type=int, help="crop the FC head is built for (default 224)")
    p.add_argument("--in-channels", type=int, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="number of classes (default 1000, or from the weights)")


def cmd_info(args) -> int:
    from .models import describe, list_models, model_config, summary

    opts = _model_options(args)
    if args.name:
        cfg = model_config(args.name, **opts)
        size = args.size or cfg.crop_size
        print(f"{args.name}: {cfg}\nat {size}x{size} input\n")
        print(f"{'layer':<8} {'type':<12} {'output (C,H,W)':<18} {'params':>13} {'mult-adds':>15} {'RF':>5}")
        for r in describe(cfg, size):
            shape = "x".join(map(str, r.out_shape))
            print(f"{r.name:<8} {r.kind:<12} {shape:<18} {r.params:>13,} {r.macs:>15,} {r.receptive_field:>5}")
        s = summary(cfg, size)
        print(f"\ntotal: {s['weight_layers']} weight layers, {s['params']:,} parameters, "
              f"{s['macs'] / 1e9:.2f} G multiply-adds, receptive field of the last conv layer {s['receptive_field']}")
        return 0
    names = list_models()[:11]  # the paper's configs, B-shallow and the BN variants (aliases omitted)
    print("VGG configurations (Simonyan & Zisserman, Tables 1-2)" +
          (f" with {opts}" if opts else ", 1000 classes, 224x224 input"))
    print(f"{'name':<10} {'weight layers':>13} {'parameters':>14} {'(M)':>7} {'paper (M)':>9} "
          f"{'mult-adds (G)':>13} {'paper (G)':>9} {'RF last conv':>12}")
    for name in names:
        s = summary(model_config(name, **opts))
        print(f"{name:<10} {s['weight_layers']:>13} {s['params']:>14,} {s['params'] / 1e6:>7.1f} "
              f"{PAPER_PARAMS_M.get(name, '-') if not opts else '-':>9} {s['macs'] / 1e9:>13.2f} "
              f"{PAPER_MACS_G.get(name, '-') if not opts else '-':>9} {s['receptive_field']:>12}")
    return 0


def _load_model(args):
    from .models import vgg
    from .weights import load

    if args.weights:
        return load(args.weights, args.model, **_model_options(args))
    if not args.model:
        raise UserError("give --model NAME (and --weights FILE for trained weights)")
    return vgg(args.model, **_model_options(args))


def _labels(args, model) -> list[str]:
    if args.labels:
        path = Path(args.labels)
        if not path.is_file():
            raise UserError(f"{path}: no such labels file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif model.class_names:
        names = list(model.class_names)
    elif model.config.num_classes == 1000:
        from importlib.resources import files

        names = files("verydeep").joinpath("imagenet_classes.txt").read_text().splitlines()
    else:
        names = [f"class {i}" for i in range(model.config.num_classes)]
    if len(names) != model.config.num_classes:
        raise UserError(f"{args.labels}: {len(names)} labels for a {model.config.num_classes}-class model")
    return names


def cmd_predict(args) -> int:
    import torch

    from .evaluate import predict_image
    from .transforms import load_rgb

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args).eval()
    names = _labels(args, model)
    results = []
    for image in args.images:
        t0 = time.perf_counter()
        p = predict_image(model, load_rgb(image), args.protocol, args.scale)
        top = p.topk(min(args.top, p.numel()))
        entry = {"image": str(image), "seconds": round(time.perf_counter() - t0, 4),
                 "top": [{"class": int(i), "name": names[int(i)], "probability": round(float(v), 6)}
                         for v, i in zip(top.values, top.indices)]}
        results.append(entry)
        if not args.json:
            print(f"{image}  ({args.protocol}, {entry['seconds']:.2f} s)")
            for r in entry["top"]:
                print(f"  {r['probability']:8.4f}  {r['class']:>4}  {r['name']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_export(args) -> int:
    import torch

    from .export import check_onnx, export_onnx
    from .weights import save

    model = _load_model(args).eval()
    out = Path(args.out)
    if out.suffix == ".onnx":
        export_onnx(model, out, graph=args.graph, with_preprocess=args.with_preprocess)
        crop = model.config.crop_size
        size = (crop, crop) if args.graph == "logits" else (crop + 32, crop + 96)
        x = torch.rand(2, model.config.in_channels, *size)
        if not args.with_preprocess:
            x = model.preprocess(x)
        err = check_onnx(model, out, x, args.graph, args.with_preprocess)
        print(f"wrote {out} ({args.graph} graph); ONNX Runtime vs PyTorch on {tuple(x.shape)}: "
              f"max relative difference {err:.2e}")
        if err > 1e-3:
            raise UserError(f"{out}: ONNX Runtime disagrees with PyTorch (relative difference {err:.2e})")
    elif out.suffix == ".safetensors":
        save(model, out)
        print(f"wrote {out} (verydeep format: safetensors + config/preprocessing header)")
    else:
        raise UserError(f"{out}: choose an output ending in .onnx or .safetensors")
    return 0


def cmd_data(args) -> int:
    import logging

    from .data import open_source, pack
    from .data import stats as colour

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.data_command == "stats":
        source = open_source(args.dir, split="train")
        st = colour.compute(source, max_images=args.max_images, side=args.side)
        out = Path(args.out) if args.out else colour.default_path(source)
        colour.save(st, out)
        print(f"{st.images} images ({st.pixels:,} pixels) from {source.root}")
        print(f"mean RGB {tuple(round(v, 3) for v in st.mean)}; covariance eigenvalues "
              f"{tuple(round(v, 3) for v in st.eigval)}; wrote {out}")
    elif args.data_command == "pack":
        index = pack(open_source(args.src), args.dst, args.shard_size)
        print(f"wrote {index['count']} samples in {len(index['shards'])} shards to {args.dst} "
              f"({index['skipped']} unreadable files skipped)")
    elif args.data_command == "fashion-mnist":
        from .data.fashion_mnist import find, load_arrays

        for split in ("train", "test"):
            images, labels = load_arrays(split)
            where = find(("train" if split == "train" else "t10k") + "-images-idx3-ubyte")
            print(f"Fashion-MNIST {split}: {len(labels)} images {images.shape[1:]} from {where} (SHA-256 checked)")
    return 0


def cmd_demo(args) -> int:
    """The README's main job until training lands: Table 2, then one image through every path of the foundation."""
    import tempfile

    import torch

    from .evaluate import predict_image
    from .export import check_onnx, export_onnx
    from .models import vgg
    from .transforms import load_rgb, rescale, to_tensor
    from .weights import load, save

    cmd_info(argparse.Namespace(name=None))
    image_path = Path(args.image) if args.image else None
    if image_path is None:
        try:  # a real photograph that a dependency ships
            import sklearn.datasets as skd

            image_path = Path(skd.__file__).parent / "images" / "china.jpg"
        except ImportError:
            pass
    if image_path is None or not image_path.exists():
        raise UserError("no demo image: pass --image FILE")
    print(f"\nVGG-16 (config D), Glorot random init (no trained weights ship with verydeep), on {image_path}")
    torch.manual_seed(0)
    model = vgg("D", init="glorot").eval()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save(model, Path(tmp) / "d.safetensors")
        model = load(Path(tmp) / "d.safetensors").eval()
        print(f"  saved + reloaded verydeep format in {time.perf_counter() - t0:.1f} s")
        img = load_rgb(image_path)
        for protocol in ("center", "dense"):
            t0 = time.perf_counter()
            p = predict_image(model, img, protocol, 256)
            print(f"  {protocol:<6} Q=256: top-1 class {int(p.argmax())}, p={float(p.max()):.4f}, "
                  f"{time.perf_counter() - t0:.2f} s")
        x = model.preprocess(to_tensor(rescale(img, 256))[None])
        print(f"  dense score map at Q=256: {tuple(model.score_map(x).shape)} (classes, h, w)")
        t0 = time.perf_counter()
        onnx_path = export_onnx(model, Path(tmp) / "d_scores.onnx", graph="score_map")
        err = check_onnx(model, onnx_path, x, "score_map")
        print(f"  ONNX score-map graph (dynamic H, W) vs ONNX Runtime: max relative difference {err:.1e} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="verydeep", description="Very deep ConvNets (VGG): the whole paper.")
    p.add_argument("--version", action="version", version=f"verydeep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="Table 1/2: layers, parameters, multiply-adds, receptive field")
    s.add_argument("name", nargs="?", help="one model: print its layers")
    s.add_argument("--size", type=int, help="input size for the per-layer table (default: the crop)")
    _add_model_options(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("predict", help="top-5 classes of images")
    s.add_argument("images", nargs="+")
    s.add_argument("--model", help="model name (A ... E, vgg16, ...); optional for verydeep weight files")
    s.add_argument("--weights", help="torchvision .pth, Keras .h5, Caffe .caffemodel or verydeep .safetensors")
    s.add_argument("--labels", help="class names, one per line (default: from the weights, or ImageNet's)")
    s.add_argument("--protocol", choices=("dense", "center"), default="dense",
                   help="dense: whole image through the fully-convolutional net + flip (the paper's); "
                        "center: one central crop (the peers')")
    s.add_argument("--scale", type=int, help="test scale Q, the smallest side (default 256 for a 224 crop)")
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--threads", type=int, help="CPU threads")
    _add_model_options(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export to ONNX (checked with ONNX Runtime) or verydeep's format")
    s.add_argument("--model")
    s.add_argument("--weights")
    s.add_argument("--out", required=True, help="FILE.onnx or FILE.safetensors")
    s.add_argument("--graph", choices=("logits", "score_map"), default="logits",
                   help="logits: fixed crop; score_map: dense, any size >= crop")
    s.add_argument("--with-preprocess", action="store_true", help="bake preprocessing in: input RGB in [0, 1]")
    _add_model_options(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("data", help="datasets: colour statistics, tar shards, Fashion-MNIST")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("stats", help="mean RGB and RGB covariance eigen-decomposition of the training set")
    d.add_argument("dir", help="dataset folder (its train/ split if present), shards, or fashion-mnist")
    d.add_argument("--max-images", type=int, help="a seeded random subset (default: every image)")
    d.add_argument("--side", type=int, default=128, help="rescale each image to this smallest side first")
    d.add_argument("--out", help="output JSON (default: DIR/verydeep_stats.json)")
    d = dsub.add_parser("pack", help="write a dataset as WebDataset-style tar shards")
    d.add_argument("src")
    d.add_argument("dst")
    d.add_argument("--shard-size", default="1000", help="samples per shard (1000) or bytes (512MB)")
    dsub.add_parser("fashion-mnist", help="find (or download, SHA-256 checked) Fashion-MNIST")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("demo", help="Table 2 and one image through models, weights, dense scoring and ONNX")
    s.add_argument("--image", help="image file (default: scikit-learn's sample photo)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"verydeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # invalid option values (unknown model name, bad sizes) are user mistakes too
        print(f"verydeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
