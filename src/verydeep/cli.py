"""The `verydeep` command. Each subcommand is a thin layer over the library; user mistakes print one line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError
from .fast import PRECISIONS
from .utils import keep_freed_memory

PRECISION_HELP = ("auto (default): the fastest that agrees with fp32 on this device (bf16 on AMX/AVX512-BF16 CPUs "
                  "and CUDA, else fp32); int8: CPU post-training quantisation, opt-in (BENCHMARKS.md)")

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

    from .evaluate import Evaluator, parse_scales, predict_image
    from .transforms import BadImage, load_rgb

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args).eval()
    names = _labels(args, model)
    scales = parse_scales(args.scales, model)
    ev = Evaluator(model, next(model.parameters()).device, batch_size=16, workers=0, precision=args.precision,
                   progress=False)
    results, failed = [], 0
    for image in args.images:
        t0 = time.perf_counter()
        try:
            p = predict_image(model, load_rgb(image), args.protocol, scales, evaluator=ev)
        except (UserError, BadImage) as e:  # one bad image in a list: reported, the others still predicted
            print(f"verydeep predict: {e if isinstance(e, UserError) else f'{image}: {e}'}", file=sys.stderr)
            failed += 1
            continue
        top = p.topk(min(args.top, p.numel()))
        entry = {"image": str(image), "protocol": args.protocol, "scales": scales,
                 "seconds": round(time.perf_counter() - t0, 4),
                 "top": [{"class": int(i), "name": names[int(i)], "probability": round(float(v), 6)}
                         for v, i in zip(top.values, top.indices)]}
        results.append(entry)
        if not args.json:
            print(f"{image}  ({args.protocol}, Q={','.join(map(str, scales))}, {entry['seconds']:.2f} s)")
            for r in entry["top"]:
                print(f"  {r['probability']:8.4f}  {r['class']:>4}  {r['name']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def cmd_evaluate(args) -> int:
    import logging

    import numpy as np
    import torch

    from .data import Subset, open_source
    from .evaluate import (PROTOCOLS, Evaluator, Posteriors, format_table, measure, parse_scales, parts,
                           train_scale_text)
    from .weights import load

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    protocols = list(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise UserError(f"--protocol {bad[0]!r}: choose from {', '.join(PROTOCOLS)} or all")
    train_scale = None
    if args.train_scale:
        v = [int(x) for x in args.train_scale.split(",")]
        train_scale = (v[0], v[-1])
    rows, names = [], []
    posts = [Posteriors.load(p) for p in args.fuse or []]
    source = None
    if args.weights:
        if not args.data:
            raise UserError("give --data (a dataset folder, labels-file folder, shards or fashion-mnist:test)")
        source = open_source(args.data, split=args.split)
        if args.limit:
            source = Subset(source, range(min(args.limit, len(source))), f"first {args.limit}")
    for w in args.weights or []:
        model = load(w, args.model)
        if model.config.num_classes != len(source.classes):
            raise UserError(f"{w}: a {model.config.num_classes}-class net, {args.data} has "
                            f"{len(source.classes)} classes")
        if model.class_names and list(model.class_names) != list(source.classes) and set(model.class_names) == \
                set(source.classes):
            raise UserError(f"{w}: class order differs from {args.data}'s")
        scales = parse_scales(args.scales, model, train_scale)
        ev = Evaluator(model, args.device, args.batch_size, args.workers, args.precision,
                       progress=not args.no_progress)
        post = ev.run(source, protocols, scales)
        name = Path(w).stem
        names.append(name)
        per_image = ev.seconds / max(int(post.valid.sum()), 1) if len(protocols) == 1 else None
        for p in protocols:
            rows.append(measure(post.combine(p, scales), post, name, train_scale_text(model), scales, p,
                                per_image))
            if len(scales) > 1 and args.per_scale:
                for q in scales:
                    rows.append(measure(post.combine(p, [q]), post, name, train_scale_text(model), [q], p))
        if args.posteriors:
            out = Path(args.posteriors if len(args.weights) == 1 else f"{args.posteriors}.{name}.npz")
            post.save(out)
            print(f"wrote per-image posteriors to {out}")
        posts.append(post)
    if len(posts) > 1:
        for p in protocols:
            members = []
            for post in posts:
                qs = sorted({q for (pp, q) in post.probs if pp in parts(p)})
                members.append(post.combine(p, qs))
            base = posts[0]
            if any(len(post.labels) != len(base.labels) or (post.labels != base.labels).any() for post in posts):
                raise UserError("fusion needs posteriors of the same images in the same order")
            rows.append(measure(np.mean(members, 0), base, "fusion(" + "+".join(names or map(str, range(len(posts))))
                                + ")", "-", [], p))
    if not rows:
        raise UserError("nothing to evaluate: give --weights (and --data), or --fuse posteriors files")
    print(format_table(rows, "text"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for fmt, ext in (("markdown", ".md"), ("csv", ".csv"), ("json", ".json")):
            out.with_suffix(ext).write_text(format_table(rows, fmt) + "\n")
        print(f"wrote {out.with_suffix('.md')}, .csv, .json")
    return 0


def cmd_explain(args) -> int:
    from .evaluate import explain
    from .transforms import load_rgb

    model = _load_model(args).eval()
    out = Path(args.out or Path(args.image).with_suffix(".explain.png").name)
    r = explain(model, load_rgb(args.image), out, args.scale, _labels(args, model))
    print(f"{args.image}: {r['name']} (p = {r['probability']:.3f}), score map {r['map'][0]}x{r['map'][1]}; "
          f"wrote {r['png']}")
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
    elif args.data_command == "mini-ilsvrc":
        from .mini import MiniConfig, build

        m = build(args.out, MiniConfig(seed=args.seed, train_per_class=args.train_per_class,
                                       val_per_class=args.val_per_class, test_per_class=args.test_per_class))
        print(f"mini-ILSVRC in {args.out}: {m['counts']} images, 10 classes, VOC boxes beside each image")
    elif args.data_command == "fashion-mnist":
        from .data.fashion_mnist import find, load_arrays

        for split in ("train", "test"):
            images, labels = load_arrays(split)
            where = find(("train" if split == "train" else "t10k") + "-images-idx3-ubyte")
            print(f"Fashion-MNIST {split}: {len(labels)} images {images.shape[1:]} from {where} (SHA-256 checked)")
    return 0


def cmd_plot(args) -> int:
    from .metrics import plot

    print(f"wrote {plot(Path(args.run_dir), Path(args.out) if args.out else None)}")
    return 0


def cmd_localize(args) -> int:
    import logging

    from . import localize
    from .data import open_source
    from .evaluate import parse_scales
    from .transforms import load_rgb
    from .weights import load

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.loc_command == "train":
        classifier = load(args.classifier, args.model)
        cfg = localize.LocConfig(args.mode, args.layers, args.scale or round(classifier.config.crop_size * 256 / 224),
                                 args.lr, args.epochs, args.batch_size, workers=args.workers, seed=args.seed)
        net, losses = localize.train(classifier, open_source(args.data, split="train"), cfg,
                                     progress=not args.no_progress)
        from .weights import save

        save(net, Path(args.out))
        print(f"Euclidean loss by epoch: {', '.join(f'{v:.4f}' for v in losses)}; wrote {args.out}")
    elif args.loc_command == "evaluate":
        net = localize.load(Path(args.weights))
        source = open_source(args.data, split=args.split)
        scale = args.scale or round(net.config.crop_size * 256 / 224)
        if args.protocol == "center":
            r = localize.centre_crop_error(net, source, scale)
            print(f"protocol 1 (central crop, ground-truth class, Q={scale}, {net.box_mode.upper()}): localisation "
                  f"error {100 * r['error']:.2f}% on {r['images']} images")
        else:
            classifier = load(args.classifier)
            scales = parse_scales(args.scales or str(scale), net)
            r = localize.dense_error(net, classifier, source, scales, args.threshold)
            print(f"protocol 2 (dense, Q={scales}, greedy merge): top-5 localisation error "
                  f"{100 * r['top5_loc_error']:.2f}%, with the ground-truth class {100 * r['gt_class_loc_error']:.2f}%"
                  f" on {r['images']} images")
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=1))
    else:
        net = localize.load(Path(args.weights))
        classifier = load(args.classifier)
        img = load_rgb(args.image)
        scales = parse_scales(args.scales, net)
        preds = localize.dense_boxes(net, classifier, img, scales, args.top, args.threshold)
        out = Path(args.out or Path(args.image).with_suffix(".boxes.png").name)
        names = classifier.class_names or [str(i) for i in range(classifier.config.num_classes)]
        localize.draw(img, preds, names, out)
        for rank, (c, box, score) in enumerate(preds, 1):
            print(f"{rank}. {names[c]}: box {[round(float(v), 1) for v in box]} (merged score {score:.2f})")
        print(f"wrote {out}")
    return 0


def cmd_features(args) -> int:
    import logging

    from .data import open_source
    from .evaluate import parse_scales
    from .features import extract
    from .weights import load

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    models = [load(w, args.model).eval() for w in args.weights]
    scales = parse_scales(args.scales, models[0])
    feats, meta = extract(models, open_source(args.data, split=args.split), args.out, scales, args.layer,
                          args.aggregate, progress=not args.no_progress, precision=args.precision)
    print(f"wrote {Path(args.out).with_suffix('.npy')}: {feats.shape[0]} images x {feats.shape[1]} "
          f"({args.layer}, Q={scales}, {args.aggregate}, {len(models)} net(s)); {len(meta['skipped'])} skipped")
    return 0


def cmd_transfer(args) -> int:
    import numpy as np

    from . import transfer

    def read(path):
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: no index beside the features (write them with `verydeep features`)")
        npy = path.with_suffix(".npy")
        try:  # memory-mapped: nothing larger than the file is allocated
            x = np.load(npy, mmap_mode="r", allow_pickle=False)
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{npy}: unreadable features ({str(e).splitlines()[0][:160]})") from None
        if x.ndim != 2 or len(meta.get("labels", [])) != len(x):
            raise UserError(f"{npy}: {len(x)} rows for {len(meta.get('labels', []))} labels in {meta_path}")
        return x, meta

    x, meta = read(args.features)
    if args.test_features:
        xt, mt = read(args.test_features)
        if "targets" not in meta:
            raise UserError(f"{args.features}: no multi-label targets (VOC features carry them)")
        t = np.asarray(meta["targets"] + mt["targets"], bool)
        r = transfer.multilabel(np.concatenate([x, xt]), t, np.arange(len(x)), np.arange(len(x), len(x) + len(xt)),
                                args.seed)
        classes = meta["classes"]
        for c, a07, a12 in zip(classes, r["ap_voc07"], r["ap_area"]):
            if a12 == a12:  # not NaN
                print(f"{c:<14} AP {100 * a12:5.1f} (VOC2007 11-point {100 * a07:5.1f})")
        print(f"mAP {100 * r['map_area']:.1f} (VOC2010+ area), {100 * r['map_voc07']:.1f} (VOC2007 11-point) over "
              f"{r['classes_scored']} classes")
    else:
        r = transfer.multiclass(x, np.asarray(meta["labels"]), args.train_per_class, args.splits, args.seed)
        print(f"mean class recall {100 * r['mean_class_recall']:.1f} +- {100 * r['std']:.1f} over {args.splits} splits "
              f"of {args.train_per_class} training images per class")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import main as reproduce

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    return reproduce(args.out or ("runs/quick" if args.quick else "runs/study"), args.quick, seeds, args.data)


def cmd_bench(args) -> int:
    from .bench import SECTIONS, BenchConfig, run

    cfg = BenchConfig(repeats=args.repeats, json=args.json, weights=args.weights or [], data=args.data,
                      parity_images=args.parity_images, compile=not args.no_compile)
    if args.device:
        cfg.device = args.device
    if args.batches:
        cfg.batches = [int(b) for b in args.batches.split(",")]
    if args.train_batch:
        cfg.train_batch = args.train_batch
    if args.only:
        cfg.sections = args.only.split(",")
    elif args.weights and args.data:
        cfg.sections = list(SECTIONS)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run(cfg)
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
    s.add_argument("--protocol", choices=("dense", "center", "multicrop", "dense+multicrop"), default="dense",
                   help="dense: whole image through the fully-convolutional net + flip (the paper's); "
                        "center: one central crop (the peers'); multicrop: 5x5 grid x 2 flips")
    s.add_argument("--scales", help="test scales Q, e.g. 256,384,512, or auto / auto-multi (the paper's rules "
                                    "from the training scale); default 256 for a 224 crop")
    s.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--threads", type=int, help="CPU threads")
    _add_model_options(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="the paper's test protocols over a dataset, with top-1/top-5 error tables")
    s.add_argument("--model", help="model name; optional for verydeep weights and checkpoints")
    s.add_argument("--weights", "--checkpoint", action="append", help="weights or checkpoint; repeat to fuse nets")
    s.add_argument("--data", help="dataset folder (its --split), labels-file folder, shards, fashion-mnist:test")
    s.add_argument("--split", default="val")
    s.add_argument("--protocol", default="dense", help="center, dense, multicrop, dense+multicrop (comma list) "
                                                       "or all")
    s.add_argument("--scales", help="e.g. 256,384,512; auto (Q = S or 0.5 (Smin + Smax)); auto-multi "
                                    "({S-32, S, S+32} or {Smin, mid, Smax})")
    s.add_argument("--train-scale", help="S or Smin,Smax, for --scales auto when the weights do not record it")
    s.add_argument("--per-scale", action="store_true", help="also a row per single scale")
    s.add_argument("--fuse", nargs="+", help="posteriors files (.npz) from earlier runs to fuse")
    s.add_argument("--posteriors", help="write per-image posteriors (.npz) for later fusion")
    s.add_argument("--out", help="write the table as OUT.md, OUT.csv and OUT.json")
    s.add_argument("--limit", type=int, help="evaluate the first N images only")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    s.add_argument("--threads", type=int)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("explain", help="PNG of an image with the top class's dense score map overlaid")
    s.add_argument("image")
    s.add_argument("--model")
    s.add_argument("--weights")
    s.add_argument("--labels")
    s.add_argument("--scale", type=int, help="test scale Q")
    s.add_argument("--out", help="PNG path (default IMAGE.explain.png here)")
    _add_model_options(s)
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("localize", help="localisation (Appendix A): train, evaluate, predict")
    lsub = s.add_subparsers(dest="loc_command", required=True)
    t = lsub.add_parser("train", help="fine-tune a box-regression net from a classification net")
    t.add_argument("--data", required=True)
    t.add_argument("--classifier", required=True, help="classification checkpoint or weights")
    t.add_argument("--model")
    t.add_argument("--mode", choices=("scr", "pcr"), default="pcr", help="single-class or per-class regression")
    t.add_argument("--layers", choices=("all", "fc"), default="all", help="fine-tune all layers or fc6-fc7 only")
    t.add_argument("--scale", type=int, help="fixed training scale S (default 256 at a 224 crop)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="localisation net (.safetensors)")
    t.add_argument("--no-progress", action="store_true")
    e = lsub.add_parser("evaluate", help="protocol 1 (centre crop, GT class) or 2 (dense + greedy merge)")
    e.add_argument("--weights", required=True, help="localisation net")
    e.add_argument("--classifier", help="classification net (protocol 2)")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--protocol", choices=("center", "dense"), default="center")
    e.add_argument("--scale", type=int)
    e.add_argument("--scales", help="dense: comma-separated Q")
    e.add_argument("--threshold", type=float, default=0.5, help="greedy merge threshold")
    e.add_argument("--json")
    pr = lsub.add_parser("predict", help="draw the top-k boxes on an image (PNG)")
    pr.add_argument("image")
    pr.add_argument("--weights", required=True)
    pr.add_argument("--classifier", required=True)
    pr.add_argument("--scales")
    pr.add_argument("--top", type=int, default=5)
    pr.add_argument("--threshold", type=float, default=0.5)
    pr.add_argument("--out")
    s.set_defaults(func=cmd_localize)

    s = sub.add_parser("features", help="very deep features (section 7): dense, pooled, flipped, L2-normalised")
    s.add_argument("--weights", action="append", required=True, help="repeat to stack several nets (D & E)")
    s.add_argument("--model")
    s.add_argument("--data", required=True)
    s.add_argument("--split")
    s.add_argument("--out", required=True, help="OUT.npy (memory-mapped) + OUT.json")
    s.add_argument("--layer", default="relu7", help="any layer name (default relu7, the 4096-D penultimate)")
    s.add_argument("--scales", help="e.g. 256,384,512 (default 256 at a 224 crop)")
    s.add_argument("--aggregate", choices=("mean", "stack"), default="mean")
    s.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("transfer", help="linear SVMs on features: mean class recall (Caltech) or mAP (VOC)")
    s.add_argument("--features", required=True)
    s.add_argument("--test-features", help="multi-label: the test part's features (VOC)")
    s.add_argument("--train-per-class", type=int, default=30)
    s.add_argument("--splits", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json")
    s.set_defaults(func=cmd_transfer)

    s = sub.add_parser("export", help="export to ONNX (checked with ONNX Runtime) or verydeep's format")
    s.add_argument("--model")
    s.add_argument("--weights")
    s.add_argument("--out", required=True, help="FILE.onnx or FILE.safetensors")
    s.add_argument("--graph", choices=("logits", "score_map"), default="logits",
                   help="logits: fixed crop; score_map: dense, any size >= crop")
    s.add_argument("--with-preprocess", action="store_true", help="bake preprocessing in: input RGB in [0, 1]")
    _add_model_options(s)
    s.set_defaults(func=cmd_export)

    from . import config as config_mod
    from .train import TrainConfig

    s = sub.add_parser("train", help="train with the paper's recipe (torchrun for several processes)",
                       description=sys.modules["verydeep.train"].__doc__ + "\n\nstages: scratch | s384 | jitter",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="a .toml, .yaml or .json file of the options below (command line wins)")
    config_mod.add_arguments(s, TrainConfig)
    s.set_defaults(func=lambda a: __import__("verydeep.train", fromlist=["main_cli"]).main_cli(a))

    s = sub.add_parser("plot", help="PNG curves of a run: loss, top-1/top-5 error, learning rate")
    s.add_argument("run_dir")
    s.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    s.set_defaults(func=cmd_plot)

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
    d = dsub.add_parser("mini-ilsvrc", help="build the miniature ILSVRC (classification + boxes) from Fashion-MNIST")
    d.add_argument("out")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--train-per-class", type=int, default=500)
    d.add_argument("--val-per-class", type=int, default=50)
    d.add_argument("--test-per-class", type=int, default=100)
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("reproduce", help="the paper's experiments in miniature on mini-ILSVRC (REPORT.md + plots)")
    s.add_argument("--quick", action="store_true", help="nets A and D, one seed, a few epochs: under 5 minutes")
    s.add_argument("--out", help="study folder (default runs/study, or runs/quick)")
    s.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    s.add_argument("--data", help="an existing mini-ILSVRC folder (default: built in OUT/data)")
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("bench", help="speed against the machine's GEMM rate and the peers (ONNX Runtime, Keras)")
    s.add_argument("--only", help="comma list of sections: gemm, inference, peers, train, protocols, parity "
                                  "(default: all but parity; parity too when --weights and --data are given)")
    s.add_argument("--batches", help="inference batch sizes (default 1,8,32)")
    s.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (median reported)")
    s.add_argument("--train-batch", type=int, help="VGG-16 training-step batch (default 32)")
    s.add_argument("--weights", action="append", help="parity: trained verydeep weights (repeat for several)")
    s.add_argument("--data", help="parity: real images (a dataset folder; its test split when it has one)")
    s.add_argument("--parity-images", type=int, default=500)
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd mode (it compiles per size)")
    s.add_argument("--threads", type=int)
    s.add_argument("--json", help="write every figure to this JSON file")
    s.set_defaults(func=cmd_bench)
    return p


def _check_common(args) -> None:
    """Options several commands share, checked before any work."""
    from .distributed import check_device

    if args.command == "train":  # TrainConfig checks its own fields
        return
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: give at least 1")
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def main(argv: list[str] | None = None) -> int:
    from .transforms import BadImage

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every command allocates VGG activations again and again (utils.py)
    try:
        _check_common(args)
        return args.func(args)
    except UserError as e:
        print(f"verydeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BadImage as e:
        print(f"verydeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
