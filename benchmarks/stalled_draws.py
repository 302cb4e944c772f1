"""Why draws of nets A and A-LRN never leave chance level at the study's width (REPRODUCTION.md, "Nets that never
started"), from a study's own runs; no training.

1. What a stalled draw's weights did: each layer's std at its last checkpoint against the std it was drawn with
   (models.init_weights), beside the factor weight decay alone gives in that many steps, exp(-steps lr wd / (1 -
   momentum)). Equal factors mean the gradients never moved the weights: decay shrank every layer, and with it the
   signal and the gradients, so a draw that has not left chance early rarely does.
2. The pull of the gradient against that of weight decay at initialisation, per draw: each layer's ||grad|| / (wd
   ||w||) on fixed training crops (the loss of train mode, dropout on), its geometric mean over layers, beside
   whether the draw learned. The initial weights are rebuilt from the draw's seed (as the trainer draws them); the
   correlation with its first checkpoint's conv1 weights checks that (about 1 for a stalled draw, which barely
   moved).

    python benchmarks/stalled_draws.py --study runs/study [--seeds 0,1,2] [--images 512]
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=512, help="training crops for the gradient at init (batches of 64)")
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from verydeep import checkpoint as ckpt
    from verydeep.data import CenterCropDataset, open_source, sample
    from verydeep.models import vgg
    from verydeep.reproduce import Study, StudyConfig, records_of
    from verydeep.config import build
    from verydeep.train import TrainConfig

    torch.set_num_threads(1)
    study = Study(StudyConfig(out=a.study, seeds=[int(s) for s in a.seeds.split(",")], jobs=1))
    src = open_source(study.data, split="train")
    q = study.single_q("A")[0]
    ds = CenterCropDataset(sample(src, a.images), q, study.cfg.crop)
    x8 = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))])).permute(0, 3, 1, 2).float()
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # sample() keeps class order: a
    x8, y = x8[order], y[order]  # batch of one class pulls harder than the trainer's shuffled batches
    summary = {}
    for name in ("A", "A-LRN"):
        for seed in study.cfg.seeds:
            for attempt in range(study.restarts(name) + 1):
                run = study.out / "runs" / study.run_id(name, seed, attempt)
                ck = ckpt.checkpoints(run)
                if not ck:
                    break
                cfg = build(TrainConfig, file=run / "config.json")
                recs = records_of(run)
                stalled = study.at_chance(run.name)
                last = ckpt.load(ck[-1])
                torch.manual_seed(cfg.seed)  # the trainer's first draw from torch's generator is the model's init
                net = vgg(cfg.model, num_classes=len(src.classes), width=cfg.width, fc_width=cfg.fc_width,
                          crop_size=cfg.crop, dropout=cfg.dropout, init=cfg.init)
                layers = [(n, p) for n, p in net.named_parameters() if p.dim() > 1]
                first = ckpt.load(ck[0])["model"]
                corr = torch.corrcoef(torch.stack([layers[0][1].detach().flatten(),
                                                   first[layers[0][0]].float().flatten()]))[0, 1].item()
                # 1. the weights' std now against at the draw; weight decay alone, with momentum's steady state
                steps = last["global_step"]
                decay_only = math.exp(-steps * cfg.lr * cfg.weight_decay / (1 - cfg.momentum))
                shrink = [last["model"][n].float().std().item() / p.detach().std().item() for n, p in layers]
                # 2. the gradient's pull against weight decay's at init
                net.train()
                torch.manual_seed(0)
                mean = torch.tensor(last["colour_stats"]["mean_rgb"]).view(1, 3, 1, 1)
                grads = np.zeros(len(layers))
                batches = range(0, len(y), 64)
                for b in batches:
                    net.zero_grad()
                    F.cross_entropy(net(x8[b:b + 64] - mean), y[b:b + 64]).backward()
                    grads += [p.grad.norm().item() / len(batches) for _, p in layers]
                pull = grads / np.array([cfg.weight_decay * p.norm().item() for _, p in layers])
                geo = float(np.exp(np.log(pull).mean()))
                summary.setdefault(name, []).append((stalled, geo))
                print(f"{run.name:13s} {'stalled' if stalled else 'learned'} after {len(recs):2d} epochs "
                      f"(init check r = {corr:.3f}) | std now / at init: "
                      f"{min(shrink):.3f}-{max(shrink):.3f}, decay alone {decay_only:.3f} | "
                      f"grad / (wd w) at init: geo mean {geo:.2f}, per layer " + " ".join(f"{v:.2f}" for v in pull),
                      flush=True)
    for name, rows in summary.items():
        ok = [g for s, g in rows if not s]
        bad = [g for s, g in rows if s]
        print(f"{name}: learned {len(ok)} of {len(rows)} draws; grad / (wd w) at init, geo mean over layers: "
              f"median {np.median([g for _, g in rows]):.2f} (learned draws {np.median(ok) if ok else float('nan'):.2f}, "
              f"stalled {np.median(bad) if bad else float('nan'):.2f})")


if __name__ == "__main__":
    sys.exit(main())
