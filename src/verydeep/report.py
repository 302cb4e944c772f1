"""REPORT.md and plots of a miniature study: the recipe as run (and where it departs from the paper, why), how each
net's training went, the paper's tables with its own figures beside, and each of the paper's findings (PAPER.md
section 5-7) judged by one stated rule over seeds; findings the paper does not make are kept apart."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import paper
from .evaluate import PROTOCOLS

S_TEXT = {"scratch": "256", "s384": "384", "jitter": "[256;512]"}
SE_RULE = 2.0   # a finding is reproduced when its mean paired effect is at least this many standard errors


def _stats(values):
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(values, digits: int = 1) -> str:
    m, s, n = _stats(values)
    return "-" if n == 0 else (f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}")


def _col(cell: dict, k: int) -> list:
    return [v[k] if isinstance(v, (list, tuple)) else v for v in cell.values()]


def paired(a: dict, b: dict, k: int = 0) -> tuple[float, float, int]:
    """Mean and std over seeds of (a - b) on metric k (seeds present in both)."""
    seeds = sorted(set(a) & set(b))
    pick = lambda v: v[k] if isinstance(v, (list, tuple)) else v  # noqa: E731
    d = [pick(a[s]) - pick(b[s]) for s in seeds]
    if not d:
        return float("nan"), float("nan"), 0
    return float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else float("nan"), len(d)


def verdict(mean: float, std: float, n: int, expected_sign: int) -> str:
    """The paired effect's mean against its standard error (std / sqrt(n)): reproduced when it lies at least SE_RULE
    standard errors in the paper's direction, opposite when as far the other way, inconclusive in between.
    expected_sign 0 is a claim of no effect ("LRN does not help"): reproduced unless the effect is SE_RULE standard
    errors away from zero in the direction the paper denies (positive = the variant helps)."""
    if n == 0 or math.isnan(mean):
        return "not run"
    if n == 1:
        if mean == 0:
            return "1 seed, no spread to judge: no difference"
        return "1 seed, no spread to judge: " + ("the paper's direction" if mean * (expected_sign or -1) > 0
                                                 else "opposite to the paper")
    se = std / math.sqrt(n)
    if expected_sign == 0:
        return "not reproduced (it helps)" if mean >= SE_RULE * se and mean > 0 else "reproduced (no gain)"
    if mean * expected_sign >= SE_RULE * se and mean * expected_sign > 0:
        return "reproduced"
    if -mean * expected_sign >= SE_RULE * se and mean * expected_sign < 0:
        return "not reproduced (opposite)"
    return "inconclusive"


def _save(fig, ax, out: Path, name: str, files: list) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    files.append(name)


def _plots(study, cells, schedules) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, files = study.out, []
    t3, t4 = cells.get("t3", {}), cells.get("t4", {})
    depth = [n for n in ("A", "B", "C", "D", "E") if n in t3]
    if len(depth) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        layers = {"A": 11, "B": 13, "C": 16, "D": 16, "E": 19}
        for n in depth:
            m, s, _ = _stats(_col(t3[n], 0))
            x = layers[n] + (0.25 if n == "C" else 0)
            ax.errorbar(x, m, yerr=s, fmt="o", capsize=4)
            ax.annotate(n, (x, m), textcoords="offset points", xytext=(6, 4))
        ax.set(xlabel="weight layers", ylabel="top-1 error (%)", title="Error vs depth (dense, one test scale)")
        _save(fig, ax, out, "error_vs_depth.png", files)
    both = [n for n in t3 if n in t4]
    if both:
        fig, ax = plt.subplots(figsize=(8, 4))
        x = np.arange(len(both))
        for off, table, label in ((-0.2, t3, "single test scale"), (0.2, t4, "three test scales")):
            ms = [_stats(_col(table[n], 0)) for n in both]
            ax.bar(x + off, [m for m, _, _ in ms], 0.4, yerr=[s for _, s, _ in ms], capsize=3, label=label)
        ax.set_xticks(x, both, rotation=30)
        ax.set(ylabel="top-1 error (%)", title="Single vs multi-scale testing (dense)")
        ax.legend()
        _save(fig, ax, out, "single_vs_multiscale.png", files)
    t5 = cells.get("t5", {})
    if t5:
        nets = list(dict.fromkeys(k[0] for k in t5))
        protos = list(PROTOCOLS)
        fig, ax = plt.subplots(figsize=(8, 4))
        x = np.arange(len(nets))
        w = 0.8 / len(protos)
        for j, p in enumerate(protos):
            ms = [_stats(_col(t5.get((n, p), {}), 0)) for n in nets]
            ax.bar(x + (j - (len(protos) - 1) / 2) * w, [m for m, _, _ in ms], w, yerr=[s for _, s, _ in ms],
                   capsize=3, label=p)
        ax.set_xticks(x, nets)
        ax.set(ylabel="top-1 error (%)", title="Test protocols (Table 5)")
        ax.legend()
        _save(fig, ax, out, "dense_vs_multicrop.png", files)
    # Validation curves of every net, every seed: where a net stopped and whether it had flattened out.
    names = [n for n in schedules if any(schedules[n].values())]
    if names:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, group in zip(axes, ([n for n in names if study.runs[n][1] == "scratch"],
                                    [n for n in names if study.runs[n][1] != "scratch"])):
            for i, n in enumerate(group):
                colour = plt.cm.tab10(i % 10)
                for j, (seed, sch) in enumerate(sorted(schedules[n].items())):
                    if sch:
                        ep = [(e, v) for e, v in enumerate(sch["curve"], 1) if v is not None]  # validated epochs
                        ax.plot(*zip(*ep), "-", color=colour, alpha=0.8, label=n if j == 0 else None)
            ax.set(xlabel="epoch", ylabel="val top-1 error (%) (centre crop)", ylim=(0, 92))
            if group:
                ax.legend(fontsize=8, ncol=2)
            ax.grid(alpha=0.3)
        axes[0].set_title("From scratch and from net A (every seed)")
        axes[1].set_title("Fine-tuning at S = 384-eq. and jittered (every seed)")
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        files.append("training_curves.png")
    return files


def recipe_lines(study, schedules: dict | None = None) -> list[str]:
    cfg = study.cfg
    # epochs the fixed schedule left unvalidated (StudyConfig.validate_first_rate), counted from the runs themselves
    unvalidated = sum(sch["curve"].count(None) for by_seed in (schedules or {}).values() for sch in by_seed.values()
                      if sch)
    seen = getattr(study, "precision_seen", None)
    precision = study.precision + (f" (measured: {seen})" if seen else "")
    rows = [
        ("crop", "224", f"{cfg.crop}: every S and Q scaled by {cfg.crop}/224 (S = 256 -> {cfg.scale(256)}, 384 -> "
                        f"{cfg.scale(384)}, [256, 512] -> [{cfg.scale(256)}, {cfg.scale(512)}])"),
        ("conv width", "64 ... 512", f"x{cfg.width} (the 2-core time budget)"),
        ("FC width", "4096", str(cfg.fc_width)),
        ("data", "ILSVRC-2012: 1.3M images, 1000 classes",
         f"mini-ILSVRC: {10 * cfg.train_per_class:,} training images, 10 classes (Fashion-MNIST objects on cluttered "
         f"canvases); validation: {10 * cfg.val_per_class:,} images; test: {cfg.test_images:,} of "
         f"{10 * cfg.test_per_class:,} rendered test images (a seeded subset)"),
        ("initialisation", "A: N(0, 0.01); deeper nets: A's first 4 conv + 3 FC layers",
         "A: the same (the std scaled to the narrow layers' fan-in, exactly 0.01 at the paper's widths); deeper nets: "
         "A's layers, the others Glorot (N(0, 0.01) left D at chance at this width); B and shallow B both from scratch, "
         "B with Glorot, shallow B with N(0, 0.01) (each stayed at chance with the other scheme: no one scheme trains "
         "both)"),
        ("dropout", "0.5 on fc6, fc7", str(cfg.dropout)),
        ("batch", "256", f"{cfg.batch_size} (256 fits in memory, but gives a quarter of the updates per epoch)"),
        ("learning rate", "1e-2; fine-tuning 1e-3", f"{cfg.lr:g}; fine-tuning {cfg.lr / 10:g}"),
        ("schedule", "lr / 10 when validation accuracy stops improving, 3 times, then stop (74 epochs)",
         (f"from scratch and from A fixed in epochs, not the paper's rule: {fixed_schedule(cfg)}, counted once above "
          f"chance (the plateau rule's first fall came on noise here, BENCHMARKS.md)"
          + (f"; {unvalidated} epochs at lr {cfg.lr:g} after the first above chance were not validated (there "
             f"validation decides nothing but the best epoch, and the best came later)" if unvalidated else "")
          + "; fine-tuning: the paper's rule, " if cfg.rate_epochs else "the same, ")
         + f"'stops improving' = {cfg.patience} epochs without improvement, once above chance; epochs capped "
         f"at {cfg.max_epochs} from scratch, {cfg.init_epochs} from A, {cfg.finetune_epochs} fine-tuning"
         + (f"; the last {cfg.final_decay} epochs before a cap at lr / 10 where no plateau came first (a schedule cut "
            f"short still ends with a decay)" if cfg.final_decay else "")),
        ("momentum, weight decay", "0.9, 5e-4", "0.9, 5e-4 (PyTorch's form, on the biases too)"),
        ("precision", "fp32 (Caffe)", precision),
    ]
    return ["## The recipe", "", "| | paper (section 3.1) | this study |", "|---|---|---|"] + \
        [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]


def fixed_schedule(cfg) -> str:
    """'18 epochs at lr 0.01, 9 at 0.001, ...' for a schedule fixed in epochs (StudyConfig.rate_epochs)."""
    return ", ".join(f"{n}{' epochs' if k == 0 else ''} at {'lr ' if k == 0 else ''}{cfg.lr * 0.1 ** k:g}"
                     for k, n in enumerate(cfg.rate_epochs))


def schedule_lines(study, schedules) -> list[str]:
    lines = ["## How training went", "",
             "Per net, over seeds: epochs trained, learning-rate decays, how many seeds ended their schedule ("
             + (f"{fixed_schedule(study.cfg)} from scratch and from A; fine-tuning: " if study.cfg.rate_epochs else "")
             + "3 decays, then no improvement) rather than the epoch cap, best validation top-1 error (centre crop), and "
             "training minutes (with the minutes of restarted draws that never left chance level; restarts: seeds "
             "whose first draw did not learn).", "",
             "| net | init | epochs | decays | schedule ended | best val top-1 | minutes | restarts |",
             "|---|---|---|---|---|---|---|---|"]
    for name, per_seed in schedules.items():
        runs = [s for s in per_seed.values() if s]
        if not runs:
            continue
        model, stage, init_from, finetune_from, init = study.runs[name]
        how = f"from {finetune_from}" if finetune_from else f"from {init_from}" if init_from else init
        lines.append(f"| {name} | {how} | {_fmt([r['epochs'] for r in runs], 0)} | {_fmt([r['decays'] for r in runs], 0)} "
                     f"| {sum(r['ended'] for r in runs)}/{len(runs)} | {_fmt([r['best_val'] for r in runs])} | "
                     f"{_fmt([(r['seconds'] + r.get('lost_seconds', 0)) / 60 for r in runs])} | "
                     f"{sum(r.get('restarts', 0) for r in runs)} |")
    return lines + [""]


CHANCE_MARGIN = 5  # a net within this many points of chance-level error did not learn


def without_chance(cells: dict, classes: int = 10) -> tuple[dict, dict]:
    """The cells with every (net, seed) whose single-scale error is at chance level left out of every table of that
    net (its mean would otherwise mix a net that learned with one that did not), and those left out, net -> seeds."""
    chance = 100 * (1 - 1 / classes)
    dead: dict = {}
    for n, cell in cells.get("t3", {}).items():
        for seed, v in cell.items():
            if _col({seed: v}, 0)[0] >= chance - CHANCE_MARGIN:
                dead.setdefault(n, []).append(seed)
    out = dict(cells)
    for key in ("t3", "t4", "t5"):
        if key in cells:
            out[key] = {k: {seed: v for seed, v in c.items() if seed not in dead.get(k[0] if key == "t5" else k, [])}
                        for k, c in cells[key].items()}
    return out, dead


def write_report(study, cells: dict) -> str:
    cfg = study.cfg
    cells, dead = without_chance(cells)
    t3, t4, t5, t6, t8, tr = (cells.get(k, {}) for k in ("t3", "t4", "t5", "t6", "t8", "transfer"))
    names = [n for n in study.runs if n in t3]
    schedules = {n: {s: study.schedule(n, s) for s in cfg.seeds} for n in names}
    command = "verydeep reproduce" + (" --quick" if cfg.quick else "") + f" --out {cfg.out}"
    lines = ["# Miniature reproduction of Simonyan & Zisserman (2015)", "",
             f"Command: `{command}`. Seeds: {', '.join(map(str, cfg.seeds))}. Cells: mean ± std over seeds of the error "
             f"in % (top-1 / top-5) on {cfg.test_images} test images; the paper's ILSVRC-2012 figures beside, for the "
             f"pattern, not the level.", ""]
    lines += recipe_lines(study, schedules) + schedule_lines(study, schedules)

    def table(title, header, rows):
        lines.extend([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    def paper_cell(table_, name):
        model, stage = study.runs[name][:2]
        fig = table_.get((model, S_TEXT[stage])) if name != "B-shallow" else None
        return f"{fig[0]} / {fig[1]}" if fig else "-"

    def started_at_chance(name, cell):
        """A net initialised from a run that never learned (every draw allowed stalled): said, not hidden."""
        source = study.runs[name][2]
        seeds = [s for s in cell if s in dead.get(source, [])] if source else []
        return f" (seed {', '.join(map(str, seeds))} started from a {source} that did not learn)" if seeds else ""

    for key, title, qs, ptable in (("t3", "Table 3: single test scale (dense)", study.single_q, paper.TABLE3),
                                    ("t4", "Table 4: multiple test scales (dense)", study.multi_q, paper.TABLE4)):
        cell = cells.get(key, {})
        if cell:
            table(title, ["net", "train S", "test Q", "top-1", "top-5", "paper"],
                  [[n + (f" (seed {', '.join(map(str, dead[n]))} did not learn: left out)" if n in dead else "") +
                    started_at_chance(n, cell[n]),
                    S_TEXT[study.runs[n][1]], ",".join(map(str, qs(n))), _fmt(_col(cell[n], 0)),
                    _fmt(_col(cell[n], 1)), paper_cell(ptable, n)] for n in study.runs if n in cell])
    if t5:
        q5 = {n: ",".join(map(str, paper.multi_scales(cfg.crop) if n.endswith("j") else study.multi_q(n)))
              for n in study.runs}
        table("Table 5: evaluation techniques", ["net", "test Q", "protocol", "top-1", "top-5", "paper"],
              [[k[0], q5.get(k[0], k[0].split("Q=")[-1]), k[1], _fmt(_col(v, 0)), _fmt(_col(v, 1)),
                ("{} / {}".format(*paper.TABLE5[(k[0][0], k[1])]) + ("" if k[0].endswith("j") else
                                                                       " (jittered, 3 scales)"))
                if (k[0][0], k[1]) in paper.TABLE5 and " Q=" not in k[0] else "-"] for k, v in t5.items()])
    if t6:
        pairs = sorted(set(t6.get("pair", {}).values()))
        rows = [["fusion of " + " / ".join(pairs), p, _fmt(_col(t6[p], 0)), _fmt(_col(t6[p], 1)),
                 "{} / {}".format(*paper.TABLE6[p])] for p in ("dense", "multicrop", "dense+multicrop") if p in t6]
        if "best" in t6:
            rows.append(["best single net (of the same candidates)", "dense+multicrop", _fmt(_col(t6["best"], 0)),
                         _fmt(_col(t6["best"], 1)), "24.4 / 7.1 (E)"])
        table("Table 6: fusion of the two best nets", ["nets", "protocol", "top-1", "top-5", "paper (D+E)"], rows)
    if t8:
        rows = [[k.split("-")[0].upper(), {"fc": "fc6-fc7", "all": "all"}[k.split("-")[1]], _fmt(list(v.values())),
                 str(paper.TABLE8[tuple(k.split("-"))])] for k, v in t8.items()]
        table(f"Table 8: localisation (centre crop, ground-truth class, S = {cfg.scale(384)}), error %",
              ["regression", "fine-tuned", "error", "paper"], rows)
    if tr:
        rows = [[k, _fmt(list(v.values())), "{} ± {}".format(*paper.TABLE11_CALTECH101[k])] for k, v in tr.items()]
        table(f"Transfer: relu7 features on scikit-learn digits, linear SVM, {cfg.transfer_per_class} training "
              f"images per class (mean class recall %)", ["features", "recall", "paper (Caltech-101)"], rows)

    agree = cells.get("agreement", {})
    if agree:
        seed = next(iter(next(iter(agree.values()))))
        lines.extend([f"Precision: every table above was computed in {study.precision}. Its top-1 agreement with fp32 "
                      f"(dense, one test scale, seed {seed}, {cfg.test_images} test images) and the largest "
                      f"difference of a posterior: " + "; ".join(f"{n} {v[seed][0]:.1f}% ({v[seed][1]:.3f})"
                                                                 for n, v in agree.items() if seed in v) + ".", ""])

    findings, others = [], []

    def finding(text, a, b, sign, k=0, paper_claim=True):
        m, s, n = paired(a, b, k) if a and b else (float("nan"), float("nan"), 0)
        named = [x for x in dead if f"({x})" in text or f"({x} " in text or f"({x}," in text]
        left = sorted({seed for x in named for seed in dead[x]})
        note = f" (seed {', '.join(map(str, left))} left out: {', '.join(named)} did not learn)" if left else ""
        if n:
            v = verdict(m, s, n, sign) + note
        elif left:
            v = f"not judged: {', '.join(named)} did not learn (chance level)"
        else:  # experiments this study did not run (--quick) are left out
            return
        needed = f"{SE_RULE * s / math.sqrt(n):.2f}" if n > 1 else "-"
        (findings if paper_claim else others).append([text, f"{m:+.2f}" + (f" ± {s:.2f}" if n > 1 else ""), str(n),
                                                      needed, v])

    e = lambda table_, key: table_.get(key, {})  # noqa: E731
    seeds_of = lambda d: {s: (v,) for s, v in d.items()}  # noqa: E731
    finding("LRN does not help: err(A) - err(A-LRN), a gain of LRN if positive", e(t3, "A"), e(t3, "A-LRN"), 0)
    for deep in ("B", "D", "E"):
        finding(f"depth helps: err(A) - err({deep})", e(t3, "A"), e(t3, deep), +1)
    finding("1x1 worse than 3x3 at equal depth: err(C) - err(D)", e(t3, "C"), e(t3, "D"), +1)
    finding("deep small filters beat shallow large ones (both from scratch): err(B-shallow) - err(B)", e(t3, "B-shallow"),
            e(t3, "B"), +1)
    for n in ("C", "D", "E"):
        finding(f"scale jittering at training helps (one test scale): err({n}384) - err({n}j)", e(t3, f"{n}384"),
                e(t3, f"{n}j"), +1)
    for n in ("C", "D", "E"):
        finding(f"multi-scale testing helps: err({n}j, 1 scale) - err({n}j, 3 scales)", e(t3, f"{n}j"),
                e(t4, f"{n}j"), +1)
    for n in [n for n in ("A", "D") if n in t3 and "Dj" not in t3]:  # the quick study: fixed-S nets' scales
        finding(f"multi-scale testing helps: err({n}, 1 scale) - err({n}, 3 scales)", e(t3, n), e(t4, n), +1)
    for n in dict.fromkeys(k[0] for k in t5 if " " not in k[0]):
        finding(f"multi-crop slightly better than dense: err({n} dense) - err({n} multi-crop)", e(t5, (n, "dense")),
                e(t5, (n, "multicrop")), +1)
        best_alone = {s: (min(t5[(n, "dense")][s][0], t5[(n, "multicrop")][s][0]),)
                      for s in e(t5, (n, "dense")) if s in e(t5, (n, "multicrop"))}
        finding(f"dense + multi-crop best: min(err({n} dense), err({n} multi-crop)) - err({n} both)", best_alone,
                e(t5, (n, "dense+multicrop")), +1)
    if t6:
        finding("fusing the two best nets beats the best single net (dense + multi-crop)", e(t6, "best"),
                e(t6, "dense+multicrop"), +1)
    if t8:
        finding("localisation: PCR beats SCR (fc6-fc7 fine-tuned)", seeds_of(t8.get("scr-fc", {})),
                seeds_of(t8.get("pcr-fc", {})), +1)
        finding("localisation: fine-tuning all layers beats fc6-fc7 (PCR)", seeds_of(t8.get("pcr-fc", {})),
                seeds_of(t8.get("pcr-all", {})), +1)
    if tr:  # recall: higher is better, so the sign flips
        best = {s: (max(tr["D"][s], tr["E"][s]),) for s in tr.get("D&E", {}) if s in tr.get("D", {})
                and s in tr.get("E", {})}
        finding("transfer: D and E stacked beat the better of D and E (recall, points)", seeds_of(tr.get("D&E", {})),
                best, +1)
    finding("deeper than D helps (the paper: saturates at 19 layers; E ~ D): err(D) - err(E)", e(t3, "D"), e(t3, "E"),
            +1, paper_claim=False)
    finding("jittered training beats S = 256-eq. too (one test scale): err(D) - err(Dj)", e(t3, "D"), e(t3, "Dj"),
            +1, paper_claim=False)

    rule = (f"Effect = mean ± std over seeds of the paired difference (percentage points; positive is the paper's "
            f"direction). Verdict: reproduced when the mean lies at least {SE_RULE:g} standard errors (std / sqrt(seeds)) "
            f"in the paper's direction, not reproduced when as far the other way, inconclusive in between. A claim of "
            f"no effect (LRN) is reproduced unless the variant helps by {SE_RULE:g} standard errors.")
    rule += (f" The column {SE_RULE:g} SE is the smallest mean effect that this spread over these seeds would call "
             f"reproduced: a true effect smaller than it cannot be shown by this study.")
    lines += ["## The paper's findings at this scale", "", rule, "",
              f"| finding | effect | seeds | {SE_RULE:g} SE | verdict |",
              "|---|---|---|---|---|"] + ["| " + " | ".join(f) + " |" for f in findings] + [""]
    if others:
        lines += ["## Other comparisons (not claims of the paper)", "",
                  f"| comparison | effect | seeds | {SE_RULE:g} SE | verdict |",
                  "|---|---|---|---|---|"] + ["| " + " | ".join(f) + " |" for f in others] + [""]
    try:
        files = _plots(study, cells, schedules)
        lines += ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    except Exception as exc:  # plots are a convenience; the numbers above stand
        lines += [f"(plots not written: {exc})", ""]
    text = "\n".join(lines)
    (study.out / "REPORT.md").write_text(text)
    (study.out / "findings.json").write_text(json.dumps({"paper": findings, "other": others}, indent=1))
    return text
