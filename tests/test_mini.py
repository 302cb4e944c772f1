"""The miniature ILSVRC (determinism, tight boxes inside the canvas, disjoint splits) and the study runner."""
import hashlib
import json
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from verydeep.data import ImageFolder
from verydeep.mini import CLASS_DIRS, MiniConfig, build, compose


def fake_arrays(per_class_train=12, per_class_test=4, seed=0):
    rng = np.random.default_rng(seed)

    def make(per_class):
        labels = np.repeat(np.arange(10), per_class)
        images = np.zeros((len(labels), 28, 28), np.uint8)
        for k in range(len(labels)):
            y0, x0 = rng.integers(2, 8, 2)
            images[k, y0:y0 + 14, x0:x0 + 12] = rng.integers(120, 255)
        return images, labels

    (a, b), (c, d) = make(per_class_train), make(per_class_test)
    return a, b, c, d


SMALL = MiniConfig(seed=3, train_per_class=4, val_per_class=2, test_per_class=3, min_side=48, max_side=64)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_and_complete(tmp_path):
    m1 = build(tmp_path / "a", SMALL, fake_arrays(), workers=1, progress=False)
    build(tmp_path / "b", SMALL, fake_arrays(), workers=2, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert m1["counts"] == {"train": 40, "val": 20, "test": 30}
    src = ImageFolder(tmp_path / "a" / "train")
    assert src.classes == sorted(CLASS_DIRS) and len(src) == 40
    other = MiniConfig(seed=4, train_per_class=4, val_per_class=2, test_per_class=3, min_side=48, max_side=64)
    build(tmp_path / "c", other, fake_arrays(), workers=1, progress=False)
    assert digest(tmp_path / "c") != digest(tmp_path / "a")


@pytest.mark.parametrize("split, other_splits, per_class",
                         [("test", ("train", "val"), 4), ("val", ("train", "test"), 5)])
def test_a_larger_split_leaves_the_other_splits_images_as_they_were(tmp_path, split, other_splits, per_class):
    # the study renders more test images than it once did: the nets trained before stay valid only if the images
    # they were trained and validated on are the same files; and it validates on more images than it once did (the
    # plateau rule decided on noise): its test split, which every table is measured on, must not move with it
    from dataclasses import replace

    build(tmp_path / "a", SMALL, fake_arrays(), workers=1, progress=False)
    build(tmp_path / "b", replace(SMALL, **{f"{split}_per_class": per_class}), fake_arrays(), workers=1,
          progress=False)
    for other in other_splits:
        assert digest(tmp_path / "a" / other) == digest(tmp_path / "b" / other)
    assert len(list((tmp_path / "b" / split).rglob("*.JPEG"))) == 10 * per_class


def test_a_folder_drawn_by_an_earlier_builder_is_not_reused(tmp_path):
    import json

    build(tmp_path / "m", SMALL, fake_arrays(), workers=1, progress=False)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    del manifest["builder"]  # as version 1 wrote it: its test split was drawn otherwise
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="an earlier version of verydeep"):
        build(tmp_path / "m", SMALL, fake_arrays(), progress=False)


def test_boxes_are_tight_and_inside_the_canvas(tmp_path):
    build(tmp_path / "m", SMALL, fake_arrays(), workers=1, progress=False)
    for xml in (tmp_path / "m").rglob("*.xml"):
        r = ET.parse(xml).getroot()
        w, h = int(r.findtext("size/width")), int(r.findtext("size/height"))
        b = [int(r.findtext(f"object/bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert 1 <= b[0] < b[2] <= w and 1 <= b[1] < b[3] <= h
        assert r.findtext("object/name") == xml.parent.name


def test_box_is_the_objects_extent():
    item = np.zeros((28, 28), np.uint8)
    item[7:21, 5:23] = 255                    # a 18 x 14 block
    cfg = MiniConfig(min_object=0.5, max_object=0.5, fragments=0)
    arr, box, (w, h) = compose(item, item[None], cfg, np.random.default_rng(0))
    short = min(w, h)
    size = round(short * 0.5)
    k = size / 28
    assert box[2] - box[0] + 1 == pytest.approx(18 * k, abs=2.5) and box[3] - box[1] + 1 == pytest.approx(14 * k, abs=2.5)
    assert arr.shape == (h, w, 3)


def test_splits_are_disjoint(tmp_path):
    m = build(tmp_path / "m", SMALL, fake_arrays(), workers=1, progress=False)
    assert not set(m["items"]["train"]) & set(m["items"]["val"])
    assert len(set(m["items"]["train"])) == 40  # no object twice in a split
    # test items come from Fashion-MNIST's own test split: recorded in each XML's source
    src = {int(ET.parse(x).getroot().findtext("source/item")) for x in (tmp_path / "m" / "test").rglob("*.xml")}
    assert src == set(m["items"]["test"])


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not a mini-ILSVRC folder"):
        build(tmp_path / "x", SMALL, fake_arrays(), progress=False)


def test_quick_study_end_to_end(tmp_path, monkeypatch):
    from verydeep import reproduce as R
    from verydeep.report import write_report

    data = tmp_path / "data"
    build(data, MiniConfig(train_per_class=8, val_per_class=2, test_per_class=2, min_side=48, max_side=64),
          fake_arrays(per_class_train=12), workers=1, progress=False)
    cfg = R.StudyConfig(out=str(tmp_path / "study"), data=str(data), seeds=[0], crop=32, width=1 / 8, fc_width=32,
                        batch_size=8, max_epochs=1, init_epochs=1, finetune_epochs=1, test_images=20, workers=0, precision="fp32",
                        quick=True, restarts=0, init_restarts=0, final_decay=2, rate_epochs=None)  # the demo's
    study = R.Study(cfg)
    cells = study.run()
    assert set(cells) == {"t3", "t4", "t5"} and set(cells["t3"]) == {"A", "D"}
    text = write_report(study, cells)
    assert "Table 3" in text and "| A " in text and (tmp_path / "study" / "REPORT.md").is_file()
    # the recipe and each net's schedule are in the report
    assert "## The recipe" in text and "| dropout | 0.5 on fc6, fc7 | 0.5 |" in text
    assert "the last 2 epochs before a cap at lr / 10" in text  # the cut schedule: stated, given to the runs
    assert json.loads((tmp_path / "study" / "runs" / "D-s0" / "config.json").read_text())["final_decay"] == 2
    assert study.schedule("D", 0)["epochs"] == 1 and "| D | from A | 1 |" in text
    # the benchmarks open a study folder as its run left it, and score other weights by Table 3's protocol
    opened = R.Study.open(cfg.out)
    assert opened.cfg == study.cfg
    table3 = study.err(study.posteriors("D", 0), "dense", study.single_q("D"))[0]
    assert opened.dense_error("D", study.run_dir("D", 0) / "model.safetensors") == pytest.approx(table3)
    assert R.Study.open(tmp_path / "stopped").cfg == R.StudyConfig(out=str(tmp_path / "stopped"))  # no record
    (tmp_path / "study" / "results.json").unlink()  # stopped before its end: the settings it started with
    assert R.Study.open(cfg.out).cfg == study.cfg
    before = (tmp_path / "study" / "runs" / "D-s0" / "model.safetensors").stat().st_mtime
    R.Study(cfg).run()  # cached: nothing retrained
    assert (tmp_path / "study" / "runs" / "D-s0" / "model.safetensors").stat().st_mtime == before
    # another test subset is evaluated anew (posteriors are cached per subset), the nets are not retrained
    from dataclasses import replace

    other = R.Study(replace(cfg, test_images=7))
    assert other.eval_dir != study.eval_dir and not list(other.eval_dir.iterdir())
    # with jobs > 1, the planned tasks (worker processes) compute every evaluation: none is left to this process
    from verydeep import evaluate

    def not_here(*a, **k):
        raise AssertionError("an evaluation the plan missed")

    monkeypatch.setattr(evaluate.Evaluator, "run", not_here)
    other.run()
    assert len(list(other.eval_dir.glob("A-s0-dense-*.npz"))) == 1  # one pass per net: Tables 3 and 4 read it
    assert (other.out / "logs" / "evaluate-D-0.log").is_file()
    assert (tmp_path / "study" / "runs" / "D-s0" / "model.safetensors").stat().st_mtime == before
    # a run trained with another recipe is not reused under this one's name
    from verydeep.errors import UserError

    with pytest.raises(UserError, match=r"A-s0: trained with width=0.125 \(now 0.25\)"):
        R.Study(replace(cfg, width=1 / 4)).run()
    with pytest.raises(UserError, match=r"A-s0: trained with an epoch cap of 1 \(now 2\)"):  # it hit its cap of 1
        R.Study(replace(cfg, max_epochs=2)).run()
    with pytest.raises(UserError, match=r"A-s0: trained with rate_epochs=None \(now \[2, 1\]\)"):  # the plateau rule
        R.Study(replace(cfg, rate_epochs=[2, 1])).run()


def test_the_study_fixes_its_schedule_in_epochs_from_scratch_and_from_a_and_says_so(tmp_path):
    # StudyConfig.rate_epochs (BENCHMARKS.md, "A schedule fixed in epochs"): given to the nets trained from scratch
    # and from A, not to the fine-tuning stages, which keep the plateau rule; the report's recipe states it
    from verydeep import reproduce as R
    from verydeep.report import recipe_lines

    study = R.Study(R.StudyConfig(out=str(tmp_path), precision="bf16"))
    given = {n: study._settings(n, 0, 0, tmp_path / "x")["rate_epochs"] for n in ("A", "B-shallow", "D", "D384", "Dj")}
    assert given == {"A": [18, 9, 2, 1], "B-shallow": [18, 9, 2, 1], "D": [18, 9, 2, 1], "D384": None, "Dj": None}
    recipe = "\n".join(recipe_lines(study))
    assert "fixed in epochs, not the paper's rule: 18 epochs at lr 0.01, 9 at 0.001, 2 at 0.0001, 1 at 1e-05" in recipe
    assert "not validated" not in recipe
    # the epochs its runs left unvalidated (StudyConfig.validate_first_rate, off in the study), counted from them
    assert {study._settings(n, 0, 0, tmp_path / "x")["validate_first_rate"] for n in ("A", "D", "Dj")} == {False}
    runs = {"A": {0: {"curve": [90.0, 40.0, None, None, 30.0]}, 1: {}}, "D": {0: {"curve": [35.0, None, 20.0]}}}
    assert "; 3 epochs at lr 0.01 after the first above chance were not validated" in "\n".join(
        recipe_lines(study, runs))
    from verydeep.config import build as build_config

    assert not build_config(R.StudyConfig, {"quick": True}).rate_epochs  # the demo: its caps, the plateau rule
    assert build_config(R.StudyConfig, {"rate_epochs": "none"}).rate_epochs is None
    plateau = R.Study(R.StudyConfig(out=str(tmp_path), precision="bf16", rate_epochs=None))
    assert plateau._settings("D", 0, 0, tmp_path / "x")["rate_epochs"] is None
    assert "| schedule | lr / 10 when validation accuracy stops improving, 3 times, then stop (74 epochs) | the same, " \
        in "\n".join(recipe_lines(plateau))
    # a study recorded before the fixed schedule existed was trained by the plateau rule, and opens as such
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.json").write_text('{"seeds": [0, 1]}')
    assert R.Study.open(tmp_path / "old").cfg.rate_epochs is None


def test_a_study_refuses_its_data_folder_built_with_other_settings(tmp_path):
    from verydeep import reproduce as R
    from verydeep.errors import UserError

    build(tmp_path / "data", SMALL, fake_arrays(), workers=1, progress=False)
    with pytest.raises(UserError, match="built with other settings"):
        R.Study(R.StudyConfig(out=str(tmp_path))).dataset()


def fake_run(study: Path, run: str, errs: list, config: dict | None = None) -> Path:
    """A finished run of a study, as its files say: weights, per-epoch records (validation error, 60 s each, the
    schedule ended at the last), and optionally its config.json."""
    import json as js

    d = study / "runs" / run
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x")
    (d / "metrics.jsonl").write_text("".join(js.dumps({"kind": "epoch", "epoch": i + 1, "val_top1_err": e,
                                                        "train_seconds": 60.0,
                                                        "schedule": "stop" if i == len(errs) - 1 else "wait"})
                                             + "\n" for i, e in enumerate(errs)))
    if config:
        (d / "config.json").write_text(js.dumps(config))
    return d


def test_a_net_that_never_left_chance_is_trained_again(tmp_path):
    # A-s1 stayed at chance (90% error, 10 classes): its standing run is the restart A-s1-r1, evaluated under that
    # name; a fine-tuning stage is never restarted; the schedule counts the restart and the minutes it cost
    from verydeep import reproduce as R

    study = R.Study(R.StudyConfig(out=str(tmp_path), restarts=2))
    fake = partial(fake_run, tmp_path)
    fake("A-s0", [0.5, 0.2])
    fake("A-s1", [0.9, 0.9, 0.9])
    assert study.run_id("A", 0) == "A-s0" and study.run_id("A", 1) == "A-s1-r1"  # r1 not trained yet: it stands
    fake("A-s1-r1", [0.9, 0.3])
    assert study.run_id("A", 1) == "A-s1-r1" and study.train("A", 1) == tmp_path / "runs" / "A-s1-r1" / "model.safetensors"
    sch = study.schedule("A", 1)
    assert sch["restarts"] == 1 and sch["lost_seconds"] == 180.0 and sch["epochs"] == 2
    fake("Dj-s1", [0.9])
    assert study.run_id("Dj", 1) == "Dj-s1" and study.restarts("Dj") == 0


def test_net_a_gets_more_draws_and_a_net_started_from_a_replaced_draw_is_refused(tmp_path):
    # A starts C, D and E: it gets init_restarts draws, other scratch nets restarts, fine-tuning stages none; a D
    # trained from A's stalled draw A-s1 does not stand once A-s1-r1 is the A of seed 1
    from verydeep import reproduce as R
    from verydeep.errors import UserError

    # (its fake runs record no rate_epochs: the plateau rule)
    study = R.Study(R.StudyConfig(out=str(tmp_path), restarts=2, init_restarts=5, rate_epochs=None))
    assert (study.restarts("A"), study.restarts("A-LRN"), study.restarts("D"), study.restarts("D384")) == (5, 2, 2, 0)
    # every draw, the last one too, is abandoned at chance after GIVE_UP epochs (not run to its cap)
    assert {study._settings("A-LRN", 1, k, tmp_path / "x")["give_up_at_chance"] for k in range(3)} == {R.GIVE_UP}
    fake = partial(fake_run, tmp_path)
    fake("A-s0", [0.5, 0.3])
    study._check_cached("D", 0, 0, fake("D-s0", [0.5, 0.3], {"init_from": "elsewhere/runs/A-s0/model.safetensors"}))
    fake("A-s1", [0.9, 0.9])
    d = fake("D-s1", [0.5, 0.3], {"init_from": str(tmp_path / "runs" / "A-s1" / "model.safetensors")})
    assert study.run_id("A", 1) == "A-s1-r1"  # not trained yet, and already the A of seed 1
    with pytest.raises(UserError, match="init_from A-s1 \\(now A-s1-r1\\)"):
        study._check_cached("D", 1, 0, d)
    fake("A-s1-r1", [0.8, 0.3])
    with pytest.raises(UserError, match="init_from A-s1 \\(now A-s1-r1\\)"):
        study._check_cached("D", 1, 0, d)


def test_a_seed_at_chance_is_left_out_of_its_nets_figures():
    # seed 1 of A never left chance (90% error on 10 classes): its A figures would mix a net that learned with one
    # that did not, so every table of A drops that seed, and the report names it
    from verydeep.report import without_chance

    cells = {"t3": {"A": {0: (20.0, 2.0), 1: (90.0, 50.0), 2: (21.0, 2.1)}, "A-LRN": {0: (19.0, 2.0), 1: (19.5, 2.0)}},
             "t4": {"A": {0: (19.0, 2.0), 1: (89.0, 50.0)}}, "t5": {("A", "dense"): {1: (88.0, 50.0), 2: (20.0, 2.0)}},
             "t8": {"pcr-fc": {1: 80.0}}}
    kept, dead = without_chance(cells)
    assert dead == {"A": [1]}
    assert set(kept["t3"]["A"]) == {0, 2} and set(kept["t3"]["A-LRN"]) == {0, 1}
    assert set(kept["t4"]["A"]) == {0} and set(kept["t5"][("A", "dense")]) == {2} and kept["t8"] == cells["t8"]


def test_verdict_needs_two_standard_errors_in_the_papers_direction():
    from verydeep.report import paired, verdict

    # three seeds, effect 1.0 +- 0.5: SE = 0.29, 3.5 SE -> reproduced; 0.5 +- 0.5: 1.7 SE -> inconclusive
    assert verdict(1.0, 0.5, 3, +1) == "reproduced"
    assert verdict(0.5, 0.5, 3, +1) == "inconclusive"
    assert verdict(-1.0, 0.5, 3, +1) == "not reproduced (opposite)"
    assert verdict(1.0, 0.5, 1, +1).endswith("the paper's direction") and verdict(0.0, 0.0, 1, +1).endswith("no difference")
    # a claim of no effect: reproduced unless the variant helps by 2 SE
    assert verdict(0.3, 0.5, 3, 0) == "reproduced (no gain)" and verdict(-2.0, 0.5, 3, 0) == "reproduced (no gain)"
    assert verdict(2.0, 0.5, 3, 0) == "not reproduced (it helps)"
    m, s, n = paired({0: (30.0, 5.0), 1: (28.0, 5.0), 2: (1.0, 0.0)}, {0: (29.0, 4.0), 1: (26.0, 4.0)})
    assert (m, n) == (1.5, 2) and abs(s - 0.7071) < 1e-3  # only seeds both sides ran


def test_the_full_studys_plan_holds_every_evaluation_its_tables_read(tmp_path, monkeypatch):
    """`run` after the plan's tasks must find everything cached: each (net, seed, precision) it evaluates, every
    localisation row and transfer seed is a task, after the runs it needs (no training: the work is recorded)."""
    from verydeep import reproduce as R
    from verydeep.evaluate import Posteriors

    cfg = R.StudyConfig(out=str(tmp_path), seeds=[0, 1], precision="bf16", jobs=1)
    study = R.Study(cfg)
    plan = study.plan()
    asked = set()

    def posteriors(self, name, seed, precision=None):
        asked.add(("evaluate", name, seed) + ((precision,) if precision else ()))
        protocols, scales = self.eval_path(name, seed, precision)[1:]
        rng = np.random.default_rng(len(asked))
        return Posteriors(np.arange(6) % 10, {(p, q): rng.dirichlet(np.ones(10), 6) for p in protocols
                                               for q in scales}, np.ones(6, bool))

    monkeypatch.setattr(R.Study, "dataset", lambda self: None)
    monkeypatch.setattr(R.Study, "train", lambda self, name, seed: asked.add(("train", name, seed)))
    monkeypatch.setattr(R.Study, "posteriors", posteriors)
    monkeypatch.setattr(R.Study, "localise", lambda self, seed, m, l: asked.add(("localise", m, l, seed)) or 0.5)
    monkeypatch.setattr(R.Study, "transfer", lambda self, seed, add: asked.add(("transfer", seed)))
    study.run()
    assert asked == set(plan)
    for key, task in plan.items():  # each task comes after the runs it reads
        if key[0] == "evaluate":
            assert task.after == [("train", key[1], key[2])]
    assert plan[("train", "Dj", 1)].after == [("train", "D384", 1)]
    assert set(plan[("transfer", 0)].after) == {("train", "Dj", 0), ("train", "Ej", 0)}
    # one evaluation per net and seed: the jittered nets' Table 3 and 4 scales are Table 5's Q3, scaled from 224
    assert study.single_q("Dj") == [110] and study.multi_q("Dj") == R.paper.multi_scales(64) == [73, 110, 146]
    assert study.evaluation("D") == (["dense"], [64, 73, 82])
