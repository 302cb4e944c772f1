"""Evidence for the study's fusion finding (Table 6): why fusing the two best nets of a seed gains so little. Every
pair of the jittered nets (Cj, Dj, Ej) over the given seeds, fused from a finished study's cached posteriors
(nothing is recomputed), against the better of its two members, in three kinds of pair:

- same A, same stream: two nets of one seed, as Table 6 fuses them. They start from the same net A (C, D and E take
  its first four conv layers and its FC layers, section 3.1) and train on the same stream: the run's seed fixes the
  validation split, order, crops, flips, colour shifts and dropout masks of every net of a seed.
- other A, other stream: members of different seeds share neither.
- same A, other stream: with --extra, a net trained again from a seed's A with another seed (which also redraws
  the layers A does not give), e.g. `verydeep train --config OUT/runs/D-s0/config.json --seed 100 ...`, then its
  S = 384 and jittered stages the same way. NET:A_SEED:STREAM_SEED=WEIGHTS; evaluated as the study evaluates
  (its precision, protocols and test images), the posteriors cached beside the weights.

For each pair: the members' and the fusion's top-1 error (%, the given protocol over the three test scales), the
gain of the fusion over the better member with its standard error over the test images (paired), how often the
members' top-1 labels differ, and how much their errors overlap (images both get wrong over images either gets
wrong). Fusion can only help where the members disagree.

    python benchmarks/fusion_pairs.py --study runs/study [--seeds 0,1] [--nets Cj,Dj,Ej] [--protocol dense+multicrop]
        [--extra Dj:0:100=runs/extra/Dj-s0b/model.safetensors]
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--seeds", default=None, help="default: the study's")
    ap.add_argument("--nets", default="Cj,Dj,Ej")
    ap.add_argument("--protocol", default="dense+multicrop")
    ap.add_argument("--extra", action="append", default=[], help="NET:A_SEED:STREAM_SEED=WEIGHTS (repeatable)")
    a = ap.parse_args()
    from verydeep import paper
    from verydeep.evaluate import Evaluator, Posteriors
    from verydeep.reproduce import Study
    from verydeep.weights import load

    study = Study.open(a.study)
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else study.cfg.seeds
    q3 = paper.multi_scales(study.cfg.crop)
    posts = {(name, s, s): study.posteriors(name, s) for name in a.nets.split(",") for s in seeds}  # cached
    for spec in a.extra:
        key, weights = spec.split("=", 1)
        name, a_seed, stream = key.split(":")
        cache = Path(weights).with_suffix(".posteriors.npz")
        if not cache.is_file():
            _, protocols, scales = study.eval_path(name, int(a_seed))
            ev = Evaluator(load(weights), batch_size=64, workers=study.cfg.workers, precision=study.precision,
                           progress=False)
            ev.run(study.test_source(), protocols, scales).save(cache)
        posts[(name, int(a_seed), int(stream))] = Posteriors.load(cache)
    first = next(iter(posts.values()))
    valid, labels = first.valid, first.labels[first.valid]
    probs = {k: post.combine(a.protocol, q3)[valid] for k, post in posts.items()}
    wrong = {k: p.argmax(1) != labels for k, p in probs.items()}
    print(f"{a.study}: {a.protocol} at Q = {q3}, {len(labels)} test images; top-1 error %; gain = better member - "
          f"fusion (± its standard error over images); differ = members' labels differ (% of images); overlap = "
          f"both wrong / either wrong")
    kinds: dict[str, list] = {}
    tag = lambda k: f"{k[0]}-s{k[1]}" + (f"/{k[2]}" if k[2] != k[1] else "")  # noqa: E731
    for (x, y) in itertools.combinations(sorted(probs), 2):
        kind = (f"{'same' if x[1] == y[1] else 'other'} A, {'same' if x[2] == y[2] else 'other'} stream, "
                f"{'same' if x[0] == y[0] else 'other'} net")
        fused = (probs[x] + probs[y]).argmax(1) != labels
        better = x if wrong[x].mean() <= wrong[y].mean() else y
        d = wrong[better].astype(float) - fused
        gain, se = 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))
        differ = 100 * float((probs[x].argmax(1) != probs[y].argmax(1)).mean())
        overlap = float((wrong[x] & wrong[y]).sum() / max((wrong[x] | wrong[y]).sum(), 1))
        kinds.setdefault(kind, []).append((gain, differ, overlap))
        print(f"{kind:<34} {tag(x)} ({100 * wrong[x].mean():5.2f}) + {tag(y)} "
              f"({100 * wrong[y].mean():5.2f}) -> {100 * fused.mean():5.2f}  gain {gain:+.2f} ± {se:.2f}  "
              f"differ {differ:5.2f}  overlap {overlap:.2f}")
    for kind, rows in kinds.items():
        g, dif, ov = np.array(rows).T
        print(f"{kind:<34} {len(rows)} pairs: gain {g.mean():+.2f} (range {g.min():+.2f} to {g.max():+.2f}), "
              f"differ {dif.mean():.2f}%, overlap {ov.mean():.2f}")


if __name__ == "__main__":
    main()
