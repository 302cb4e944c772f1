"""What LRN does in a trained net: the normalising factor (k + alpha/n sum a^2)^-beta of A-LRN's LRN layer over real
images, against the constant k^-beta it is at zero activity. If the factor stays near that constant, the layer acts
as a fixed rescaling of conv1's output (a reparametrisation that changes conv1's effective learning rate), not as a
normalisation across channels.

    python benchmarks/lrn_probe.py --study runs/study [--seeds 0,1,2] [--images 500]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=500)
    a = ap.parse_args()
    import torch

    from verydeep.data import open_source, sample
    from verydeep.evaluate import ScaledImages, center_view
    from verydeep.models import ChannelLRN
    from verydeep.reproduce import Study, StudyConfig
    from verydeep.weights import load

    study = Study(StudyConfig(out=a.study, seeds=[int(s) for s in a.seeds.split(",")], jobs=1))
    q = study.single_q("A-LRN")[0]
    images = ScaledImages(sample(open_source(study.data, split="val"), a.images), [q])
    crops = torch.stack([center_view(images[i][2][q], study.cfg.crop)[0] for i in range(len(images))])
    for seed in study.cfg.seeds:
        run = study.run_dir("A-LRN", seed)
        if not (run / "model.safetensors").is_file() or study.at_chance(run.name):
            print(f"seed {seed}: {run.name} not trained or never learned: skipped")
            continue
        net = load(run / "model.safetensors").eval()
        lrn = next(m for m in net.modules() if isinstance(m, ChannelLRN))
        seen = {}
        hook = lrn.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
        with torch.no_grad():
            net(net.preprocess(crops.float() / 255))
        hook.remove()
        x, y = seen["x"], seen["y"]
        const = lrn.k ** -lrn.beta
        active = x > 0  # the factor matters only where the ReLU let a value through
        factor = (y[active] / x[active]).numpy() / const
        rel = float((y - x * const).norm() / y.norm())
        p = np.percentile(factor, [1, 5, 50, 95, 99])
        print(f"seed {seed} ({run.name}): factor / k^-beta over {active.sum().item():,} active values: "
              f"median {p[2]:.3f}, 5-95% {p[1]:.3f}-{p[3]:.3f}, 1-99% {p[0]:.3f}-{p[4]:.3f}; "
              f"|LRN(x) - k^-beta x| / |LRN(x)| = {rel:.3f}; conv1 output mean {x.mean():.2f}, max {x.max():.1f}")


if __name__ == "__main__":
    sys.exit(main())
