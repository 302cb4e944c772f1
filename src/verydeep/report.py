"""REPORT.md and plots of a miniature study: the paper's tables with its own figures beside, and for each of its
findings (PAPER.md section 5) whether it reproduced at this scale, with the effect size and its spread."""
from __future__ import annotations

import json
import math

from pathlib import Path

import numpy as np

from .evaluate import PROTOCOLS
from .paper import TABLE3 as PAPER_T3
from .paper import TABLE4 as PAPER_T4
from .paper import TABLE5 as PAPER_T5
from .paper import TABLE6 as PAPER_T6
from .paper import TABLE8 as PAPER_T8

S_TEXT = {"scratch": "256", "s384": "384", "jitter": "[256;512]"}


def _stats(values):
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(values) -> str:
    m, s, n = _stats(values)
    return "-" if n == 0 else (f"{m:.1f}" if n == 1 else f"{m:.1f} ± {s:.1f}")


def _col(cell: dict, k: int) -> list:
    return [v[k] for v in cell.values()]


def paired(a: dict, b: dict, k: int = 0) -> tuple[float, float, int]:
    """Mean and std over seeds of (a - b) on metric k (seeds present in both)."""
    seeds = sorted(set(a) & set(b))
    d = [(a[s][k] if isinstance(a[s], (list, tuple)) else a[s]) - (b[s][k] if isinstance(b[s], (list, tuple)) else b[s])
         for s in seeds]
    if not d:
        return float("nan"), float("nan"), 0
    return float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else float("nan"), len(d)


def verdict(mean: float, std: float, n: int, expected_sign: int) -> str:
    """Reproduced when the mean paired difference has the paper's sign and exceeds its standard error; not
    reproduced when it has the opposite sign beyond one standard error; otherwise inconclusive."""
    if n == 0 or math.isnan(mean):
        return "not run"
    if n == 1:  # no spread to judge against
        return "paper's direction (1 seed, no spread)" if mean * expected_sign > 0 else \
            "opposite direction (1 seed, no spread)"
    se = std / math.sqrt(n) if n > 1 and not math.isnan(std) else float("inf")
    if mean * expected_sign > se:
        return "reproduced"
    if mean * expected_sign < -se:
        return "not reproduced (opposite)"
    return "inconclusive (within one standard error)"


def _save(fig, ax, out: Path, name: str, files: list) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    files.append(name)


def _plots(study, cells) -> list[str]:
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
            ax.errorbar(layers[n] + (0.25 if n == "C" else 0), m, yerr=s, fmt="o", capsize=4)
            ax.annotate(n, (layers[n] + (0.25 if n == "C" else 0), m), textcoords="offset points", xytext=(6, 4))
        ax.set(xlabel="weight layers", ylabel="top-1 error (%)", title="Error vs depth (dense, single scale, S=256-eq.)")
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
        nets = sorted({k[0] for k in t5})
        protos = list(PROTOCOLS)
        fig, ax = plt.subplots(figsize=(8, 4))
        x = np.arange(len(nets))
        for j, p in enumerate(protos):
            ms = [_stats(_col(t5.get((n, p), {}), 0)) for n in nets]
            ax.bar(x + (j - 1.5) * 0.2, [m for m, _, _ in ms], 0.2, yerr=[s for _, s, _ in ms], capsize=3, label=p)
        ax.set_xticks(x, nets)
        ax.set(ylabel="top-1 error (%)", title="Test protocols (Table 5)")
        ax.legend()
        _save(fig, ax, out, "dense_vs_multicrop.png", files)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("A", "D", "D-glorot", "Dj"):
        f = out / "runs" / f"{name}-s0" / "metrics.jsonl"
        if f.is_file():
            recs = [json.loads(line) for line in f.read_text().splitlines() if '"epoch"' in line]
            ax.plot([r["epoch"] for r in recs], [100 * r["val_top1_err"] for r in recs], "o-", label=name)
    ax.set(xlabel="epoch", ylabel="val top-1 error (%)", title="Training curves (seed 0)")
    ax.legend()
    _save(fig, ax, out, "training_curves.png", files)
    return files


def write_report(study, cells: dict) -> str:
    cfg = study.cfg
    t3, t4, t5, t6, t8, tr = (cells.get(k, {}) for k in ("t3", "t4", "t5", "t6", "t8", "transfer"))
    lines = ["# Miniature reproduction of Simonyan & Zisserman (2015)", "",
             f"Command: `verydeep reproduce{' --quick' if cfg.quick else ''} --out {cfg.out}`. Seeds: {cfg.seeds}. "
             f"Data: mini-ILSVRC (Fashion-MNIST objects on cluttered canvases, 10 classes), test subset of "
             f"{cfg.test_images} images. Geometry: crop {cfg.crop} (S = 256 -> {cfg.scale(256)}, 384 -> "
             f"{cfg.scale(384)}, [256, 512] -> [{cfg.scale(256)}, {cfg.scale(512)}]), width x{cfg.width}, FC "
             f"{cfg.fc_width}, dropout {cfg.dropout}, batch {cfg.batch_size}, lr {cfg.lr} ({cfg.lr / 10} when fine-tuning), "
             f"{cfg.epochs} epochs ({cfg.finetune_epochs} fine-tuning), {cfg.precision}. Cells: mean ± std over "
             f"seeds of the error in % (top-1 / top-5); the paper's ILSVRC-2012 figures beside, for the pattern, not "
             f"the level.", ""]

    def table(title, header, rows):
        lines.extend([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    if t3:
        rows = []
        for n in t3:
            s = S_TEXT[study.runs[n][1]]
            model = study.runs[n][0]
            paper = PAPER_T3.get((model, s)) if n not in ("D-glorot", "B-shallow") else None
            rows.append([n, s, ",".join(map(str, study.single_q(n))), _fmt(_col(t3[n], 0)), _fmt(_col(t3[n], 1)),
                         f"{paper[0]} / {paper[1]}" if paper else "-"])
        table("Table 3: single test scale (dense)", ["net", "train S", "test Q", "top-1", "top-5", "paper"], rows)
    if t4:
        rows = []
        for n in t4:
            s = S_TEXT[study.runs[n][1]]
            paper = PAPER_T4.get((study.runs[n][0], s)) if n not in ("D-glorot", "B-shallow") else None
            rows.append([n, s, ",".join(map(str, study.multi_q(n))), _fmt(_col(t4[n], 0)), _fmt(_col(t4[n], 1)),
                         f"{paper[0]} / {paper[1]}" if paper else "-"])
        table("Table 4: multiple test scales (dense)", ["net", "train S", "test Q", "top-1", "top-5", "paper"], rows)
    if t5:
        rows = [[k[0], k[1], _fmt(_col(v, 0)), _fmt(_col(v, 1)),
                 "{} / {}".format(*PAPER_T5[(k[0][0], k[1])]) if (k[0][0], k[1]) in PAPER_T5 and k[0] in ("Dj", "Ej")
                 else "-"] for k, v in t5.items()]
        table("Table 5: evaluation techniques", ["net", "protocol", "top-1", "top-5", "paper"], rows)
    if t6:
        pairs = sorted(set(t6.get("pair", {}).values()))
        rows = [["fusion of " + "/".join(pairs), p, _fmt(_col(t6[p], 0)), _fmt(_col(t6[p], 1)),
                 "{} / {}".format(*PAPER_T6[p])] for p in ("dense", "multicrop", "dense+multicrop") if p in t6]
        table("Table 6: fusion of the two best nets", ["nets", "protocol", "top-1", "top-5", "paper (D+E)"], rows)
    if t8:
        rows = [[k.split("-")[0].upper(), {"fc": "fc6-fc7", "all": "all"}[k.split("-")[1]], _fmt(list(v.values())),
                 str(PAPER_T8[tuple(k.split("-"))])] for k, v in t8.items()]
        table("Table 8: localisation (centre crop, ground-truth class, S = 384-eq.), error %",
              ["regression", "fine-tuned", "error", "paper"], rows)
    if tr:
        rows = [[k, _fmt(list(v.values())), {"D": "91.8 ± 1.0", "E": "92.3 ± 0.5", "D&E": "92.7 ± 0.5"}[k]]
                for k, v in tr.items()]
        table(f"Transfer: relu7 features on scikit-learn digits, linear SVM, {cfg.transfer_per_class} training "
              f"images per class (mean class recall %)", ["features", "recall", "paper (Caltech-101)"], rows)

    findings = []

    def finding(text, a, b, sign, k=0, table=None):
        m, s, n = paired(a, b, k) if a and b else (float("nan"), float("nan"), 0)
        if n:  # experiments this study did not run (--quick) are left out
            findings.append([text, f"{m:+.2f}" + (f" ± {s:.2f}" if n > 1 else ""), str(n), verdict(m, s, n, sign)])

    e = lambda table, key: table.get(key, {})  # noqa: E731
    finding("LRN does not help: err(A-LRN) - err(A) >= 0", e(t3, "A-LRN"), e(t3, "A"), +1)
    finding("depth helps: err(A) - err(D) > 0", e(t3, "A"), e(t3, "D"), +1)
    finding("depth helps: err(A) - err(E) > 0", e(t3, "A"), e(t3, "E"), +1)
    finding("1x1 worse than 3x3 at equal depth: err(C) - err(D) > 0", e(t3, "C"), e(t3, "D"), +1)
    finding("deep small filters beat shallow large ones: err(B-shallow) - err(B) > 0", e(t3, "B-shallow"),
            e(t3, "B"), +1)
    finding("scale jittering at training helps (one test scale): err(D384) - err(Dj) > 0", e(t3, "D384"),
            e(t3, "Dj"), +1)
    finding("scale jittering at test time helps: err(Dj, 1 scale) - err(Dj, 3 scales) > 0", e(t3, "Dj"),
            e(t4, "Dj"), +1)
    finding("multi-crop better than dense: err(dense) - err(multicrop) > 0", e(t5, ("Dj", "dense")),
            e(t5, ("Dj", "multicrop")), +1)
    finding("dense + multi-crop best: err(multicrop) - err(both) > 0", e(t5, ("Dj", "multicrop")),
            e(t5, ("Dj", "dense+multicrop")), +1)
    if t6 and t5:
        # The fusion's competitor: the best single net among the candidates (Cj, Dj, Ej) at the same 3 scales.
        best_single = {s: min(t4[n][s][0] for n in ("Cj", "Dj", "Ej") if s in t4.get(n, {}))
                       for s in t6.get("dense", {})}
        finding("fusing the two best nets helps: min single err - fusion err > 0",
                {s: (v,) for s, v in best_single.items()}, t6.get("dense", {}), +1)
    finding("initialising from A vs Glorot (post-submission note: Glorot works): err(D-glorot) - err(D)",
            e(t3, "D-glorot"), e(t3, "D"), +1)
    if t8:
        finding("localisation: PCR beats SCR (fc6-fc7 fine-tuned)", {s: (v,) for s, v in t8.get("scr-fc", {}).items()},
                {s: (v,) for s, v in t8.get("pcr-fc", {}).items()}, +1)
        finding("localisation: fine-tuning all layers beats fc6-fc7", {s: (v,) for s, v in t8.get("pcr-fc", {}).items()},
                {s: (v,) for s, v in t8.get("pcr-all", {}).items()}, +1)
    if tr:
        finding("transfer: stacking D and E beats E alone (recall)", {s: (v,) for s, v in tr.get("D&E", {}).items()},
                {s: (v,) for s, v in tr.get("E", {}).items()}, +1)
    lines += ["## The paper's findings at this scale", "",
              "Effect = mean ± std over seeds of the paired difference (percentage points; positive is the paper's "
              "direction). Reproduced when the mean has the paper's sign and exceeds one standard error; not "
              "reproduced when it is beyond one standard error the other way; inconclusive in between.", "",
              "| finding | effect | seeds | verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(f) + " |" for f in findings]
    lines.append("")
    try:
        files = _plots(study, cells)
        lines += ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    except Exception as exc:  # plots are a convenience; the numbers above stand
        lines += [f"(plots not written: {exc})", ""]
    text = "\n".join(lines)
    (study.out / "REPORT.md").write_text(text)
    return text
