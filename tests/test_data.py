"""Data sources, shards, Fashion-MNIST, colour statistics, and the training loader (PAPER.md sections 2-3)."""
import gzip
import hashlib
import io
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import numpy as np
import pytest
import torch
from PIL import Image

from verydeep.data import (EpochSampler, ImageFolder, ImageList, LoaderConfig, TarShards, TrainLoader, open_source,
                           pack, parse_voc)
from verydeep.data import fashion_mnist as fm
from verydeep.data import stats as colour
from verydeep.errors import UserError
from verydeep.transforms import TrainTransform
from imagegen import bad_files, imagenet_folder, photo, voc_xml, write_jpeg

SMALL = TrainTransform(64, 96, crop=64)


@pytest.fixture
def folder(tmp_path):
    return imagenet_folder(tmp_path / "train")


def test_image_folder_layout(folder):
    src = ImageFolder(folder)
    assert src.classes == ["n01", "n02", "n03"] and len(src) == 18
    assert np.bincount(src.labels()).tolist() == [6, 6, 6]
    s = src.read(7)
    assert s.label == 1 and s.path.endswith("n02_1.JPEG") and s.image[:2] == b"\xff\xd8"
    assert s.boxes.shape == (0, 4)


def test_empty_class_folder_is_kept_and_logged(folder, caplog):
    (folder / "n00_empty").mkdir()
    with caplog.at_level(logging.WARNING, "verydeep.data"):
        src = ImageFolder(folder)
    assert src.classes[0] == "n00_empty" and 0 not in src.labels()
    assert "empty class folder" in caplog.text


def test_voc_boxes_beside_images_and_in_a_boxes_dir(folder, tmp_path):
    voc_xml(folder / "n01" / "n01_0.xml", 120, 90, [("n01", (10, 20, 50, 60)), ("dog", (0, 0, 5, 5))])
    boxes_dir = tmp_path / "Annotations"
    (boxes_dir / "n02").mkdir(parents=True)
    voc_xml(boxes_dir / "n02" / "n02_3.xml", 90, 120, [("n02", (1, 2, 3, 4))])
    src = ImageFolder(folder, boxes_dir=boxes_dir)
    s = src.read(0)
    assert s.boxes.tolist() == [[10, 20, 50, 60], [0, 0, 5, 5]] and s.box_labels.tolist() == [0, -1]
    assert s.size == (120, 90)
    assert src.read(9).boxes.tolist() == [[1, 2, 3, 4]] and src.read(9).box_labels.tolist() == [1]


def test_voc_parse_errors(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotation><object><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="non-numeric"):
        parse_voc(tmp_path / "bad.xml")


def test_flat_folder_with_labels_file(tmp_path):
    d = tmp_path / "val"
    for i in range(4):
        write_jpeg(d / f"ILSVRC2012_val_{i:08d}.JPEG", photo(50, 40, i))
    (d / "labels.txt").write_text("\n".join(f"ILSVRC2012_val_{i:08d}.JPEG n0{i % 2 + 1}" for i in range(4)))
    src = open_source(d, classes=["n01", "n02"])
    assert isinstance(src, ImageList) and src.labels().tolist() == [0, 1, 0, 1]
    # ILSVRC devkit ground truth: one 1-based label per line, for the sorted image names.
    (tmp_path / "gt.txt").write_text("3\n1\n2\n3\n")
    src = ImageList(d, tmp_path / "gt.txt", classes=["a", "b", "c"], one_based=True)
    assert src.labels().tolist() == [2, 0, 1, 2]
    (tmp_path / "short.txt").write_text("1\n2\n")
    with pytest.raises(UserError, match="2 labels for 4 images"):
        ImageList(d, tmp_path / "short.txt")


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing", "no such dataset folder"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "not a directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no class folders"),
    (lambda p: (p / "e" / "c1").mkdir(parents=True) or p / "e", "no images found"),
])
def test_missing_and_empty_datasets_are_one_line_errors(tmp_path, make, match):
    with pytest.raises(UserError, match=match) as e:
        ImageFolder(make(tmp_path))
    assert "\n" not in str(e.value)


def test_pack_and_read_shards(folder, tmp_path):
    voc_xml(folder / "n01" / "n01_0.xml", 120, 90, [("n01", (10, 20, 50, 60))])
    src = ImageFolder(folder)
    index = pack(src, tmp_path / "shards", shard_size="5", progress=False)
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 3]
    shards = open_source(tmp_path / "shards")
    assert isinstance(shards, TarShards) and len(shards) == 18 and shards.classes == src.classes
    assert shards.labels().tolist() == src.labels().tolist()
    for i in (0, 7, 17):  # random access equals the source
        a, b = shards.read(i), src.read(i)
        assert a.image == b.image and a.label == b.label and a.boxes.tolist() == b.boxes.tolist()
    streamed = list(shards.iterate())
    assert [i for i, _ in streamed] == list(range(18))
    assert all(s.image == src.read(i).image for i, s in streamed)
    by_bytes = pack(src, tmp_path / "s2", shard_size="8KB", progress=False)
    assert len(by_bytes["shards"]) > 1


def test_shard_size_parsing():
    from verydeep.data.pack import parse_shard_size
    assert parse_shard_size("1000") == (1000, None) and parse_shard_size("512MB") == (None, 512 * 2**20)
    with pytest.raises(UserError):
        parse_shard_size("lots")


def batches(loader, epoch=0):
    return [(b.images.clone(), b.labels.clone(), b.shifts.clone(), b.indices.clone()) for b in loader.epoch(epoch)]


def test_same_seed_same_crops_across_worker_counts(folder):
    src = ImageFolder(folder)
    runs = [batches(TrainLoader(src, SMALL, LoaderConfig(batch_size=4, workers=w, seed=3))) for w in (0, 1, 2)]
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for a, b in zip(runs[0], other):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    different = batches(TrainLoader(src, SMALL, LoaderConfig(batch_size=4, workers=0, seed=4)))
    assert not torch.equal(different[0][0], runs[0][0][0])
    epoch1 = batches(TrainLoader(src, SMALL, LoaderConfig(batch_size=4, workers=0, seed=3)), epoch=1)
    assert not torch.equal(epoch1[0][3], runs[0][0][3])


def test_ranks_split_the_global_batch_exactly(folder):
    src = ImageFolder(folder)
    whole = batches(TrainLoader(src, SMALL, LoaderConfig(batch_size=8, workers=0)))
    parts = [batches(TrainLoader(src, SMALL, LoaderConfig(batch_size=4, workers=0), rank=r, world=2))
             for r in (0, 1)]
    for k, (img, lab, sh, idx) in enumerate(whole):
        got = {int(i): im for p in parts for im, i in zip(p[k][0], p[k][3])}
        assert sorted(got) == sorted(idx.tolist())
        for im, i in zip(img, idx):
            assert torch.equal(got[int(i)], im)  # the same crop of the same image


def test_sampler_resume_skips_consumed_samples():
    s = EpochSampler(20, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=8)
    assert list(s) == full[8:] and len(s) == 12


def test_bad_inputs_never_stop_an_epoch(folder, caplog):
    expected = bad_files(folder / "n02")
    src = ImageFolder(folder)
    loader = TrainLoader(src, SMALL, LoaderConfig(batch_size=4, workers=2, drop_last=False, max_skip_fraction=0.5))
    with caplog.at_level(logging.WARNING, "verydeep.data"):
        seen = sum(len(b.labels) for b in loader.epoch(0))
        list(loader.epoch(1))  # second epoch: paths are not logged again
    n_skip = sum(v == "skip" for v in expected.values())
    assert seen == len(src) - n_skip
    summary = loader.skips.summary()
    assert f"{n_skip} skipped" in summary and "not an image" in summary and "decompression bomb" in summary
    for name, outcome in expected.items():
        assert (caplog.text.count(name + ": skipped") == 1) == (outcome == "skip"), name


def test_too_many_bad_images_fail_with_a_clear_message(folder):
    bad_files(folder / "n02")
    loader = TrainLoader(ImageFolder(folder), SMALL, LoaderConfig(batch_size=4, workers=0, drop_last=False))
    with pytest.raises(UserError, match=r"unusable images .* pass the 1.00% limit"):
        list(loader.epoch(0))


def test_unreadable_file_is_skipped(folder, monkeypatch):
    import builtins

    import verydeep.transforms as T

    target = str(folder / "n01" / "n01_2.JPEG")

    def fake_open(path, *a, **kw):
        if str(path) == target:
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *a, **kw)

    monkeypatch.setattr(T, "open", fake_open, raising=False)
    loader = TrainLoader(ImageFolder(folder), SMALL, LoaderConfig(batch_size=6, workers=0, drop_last=False,
                                                                 max_skip_fraction=0.2))
    seen = [b for b in loader.epoch(0)]
    assert sum(len(b.skips) for b in seen) == 1 and seen and "1 permission denied" in loader.skips.summary()


def test_colour_stats_on_known_colours(tmp_path):
    for c, rgb in enumerate([(10, 20, 30), (50, 60, 70)]):
        for i in range(3):
            (tmp_path / "d" / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), rgb).save(tmp_path / "d" / f"c{c}" / f"{i}.png")
    st = colour.compute(ImageFolder(tmp_path / "d"), progress=False)
    np.testing.assert_allclose(st.mean, (30, 40, 50), atol=1e-9)
    # Two colours in equal amounts: covariance 0.25 d d^T, d = (40, 40, 40) / 255: one eigenvalue, along (1,1,1).
    np.testing.assert_allclose(st.eigval, (1200 / 255**2, 0, 0), atol=1e-9)
    np.testing.assert_allclose(np.abs(np.asarray(st.eigvec)[:, 0]), np.full(3, 3 ** -0.5), atol=1e-9)
    path = colour.default_path(ImageFolder(tmp_path / "d"))
    assert path == tmp_path / "d" / "verydeep_stats.json"
    colour.save(st, path)
    assert colour.load(path) == st
    ImageFolder(tmp_path / "d")  # the stats file beside the data is not mistaken for a class


def test_data_cli_stats_and_pack(folder, tmp_path, capsys):
    from verydeep.cli import main
    assert main(["data", "stats", str(folder.parent)]) == 0
    assert (folder / "verydeep_stats.json").is_file()
    assert main(["data", "pack", str(folder), str(tmp_path / "sh"), "--shard-size", "10"]) == 0
    assert "wrote 18 samples in 2 shards" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- Fashion-MNIST
def idx_bytes(arr):
    header = b"\0\0\x08" + bytes([arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fmnist(monkeypatch, tmp_path):
    """Small generated IDX files standing in for Fashion-MNIST, with their checksums registered."""
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 255, (12, 28, 28)),
             "train-labels-idx1-ubyte": np.arange(12) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 255, (5, 28, 28)),
             "t10k-labels-idx1-ubyte": np.arange(5) % 10}
    raw = {k: idx_bytes(v) for k, v in files.items()}
    monkeypatch.setattr(fm, "FILES", {k: (hashlib.sha256(v).hexdigest(), len(v)) for k, v in raw.items()})
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("VERYDEEP_DATA", str(tmp_path / "data"))
    fm.load_arrays.cache_clear()
    yield raw
    fm.load_arrays.cache_clear()


def test_parse_idx_rejects_malformed():
    good = idx_bytes(np.zeros((2, 3, 3)))
    assert fm.parse_idx(good).shape == (2, 3, 3)
    with pytest.raises(UserError, match="IDX header says"):
        fm.parse_idx(good[:-1])
    with pytest.raises(UserError, match="not an unsigned-byte IDX"):
        fm.parse_idx(b"\x89PNG....")


def test_fashion_mnist_found_in_verydeep_data(fake_fmnist, tmp_path):
    d = tmp_path / "data" / "fashion-mnist"
    d.mkdir(parents=True)
    for k, v in fake_fmnist.items():
        (d / f"{k}.gz").write_bytes(gzip.compress(v))
    src = open_source("fashion-mnist:test")
    assert len(src) == 5 and src.classes[0] == "T-shirt/top"
    s = src.read(2)
    assert s.label == 2 and s.image.size == (28, 28)
    out, _ = TrainTransform(32, 40, crop=32)(s.image, np.random.default_rng(0))
    assert out.shape == (32, 32, 3)  # HWC: batches become channels-last tensors without a copy


def test_fashion_mnist_download_checks_sha256(fake_fmnist, tmp_path):
    served = tmp_path / "server"
    served.mkdir()
    for k, v in fake_fmnist.items():
        (served / f"{k}.gz").write_bytes(gzip.compress(v))
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}/"
    try:
        path = fm.download("train-labels-idx1-ubyte", base_url=base)
        assert path.parent == tmp_path / "data" / "fashion-mnist" and gzip.decompress(path.read_bytes()) == \
            fake_fmnist["train-labels-idx1-ubyte"]
        (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 10))
        with pytest.raises(UserError, match="SHA-256 mismatch"):
            fm.download("t10k-labels-idx1-ubyte", base_url=base)
        assert not (tmp_path / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
        with pytest.raises(UserError, match="cannot download"):
            fm.download("t10k-images-idx3-ubyte", base_url=f"http://127.0.0.1:{httpd.server_port}/nowhere/")
    finally:
        httpd.shutdown()


def test_fashion_mnist_download_with_fake_opener(fake_fmnist):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    urls = []

    def opener(url, timeout):
        urls.append(url)
        return Response(gzip.compress(fake_fmnist["t10k-images-idx3-ubyte"]))

    fm.download("t10k-images-idx3-ubyte", opener=opener)
    assert urls == [fm.URL + "t10k-images-idx3-ubyte.gz"]


@pytest.mark.skipif(fm.find("t10k-labels-idx1-ubyte") is None, reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_checksums():
    images, labels = fm.load_arrays("test", allow_download=False)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


# ------------------------------------------------------------------------------------------- hostile folders
def test_fifo_named_like_an_image_is_left_out_and_never_read(folder, caplog):
    import os

    from verydeep.transforms import BadImage, read_bytes

    fifo = folder / "n01" / "x.JPEG"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, "verydeep.data"):
        src = ImageFolder(folder)
    assert len(src) == 18 and "x.JPEG: not a regular file" in caplog.text
    with pytest.raises(BadImage, match="not a regular file"):
        read_bytes(fifo)  # would block forever if opened


def test_symlink_loop_is_followed_once(folder, caplog):
    import os

    os.symlink(".", folder / "n01" / "loop")
    os.symlink("../n02", folder / "n01" / "other")  # a link elsewhere is still followed
    with caplog.at_level(logging.WARNING, "verydeep.data"):
        src = ImageFolder(folder)
    assert len(src) == 18 + 6 and "a symbolic link back to a folder already read (a loop)" in caplog.text


def test_unreadable_class_folder_is_named_not_called_empty(folder, monkeypatch):
    import os

    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("n02"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"n02: cannot list the folder \(Permission denied\)"):
        ImageFolder(folder)


def thin_png(path, w, h):
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


def test_extreme_aspect_ratio_costs_a_crop_in_validation_and_is_skipped_whole(tmp_path):
    from verydeep.data import CenterCropDataset
    from verydeep.evaluate import Evaluator
    from verydeep.transforms import BadImage, check_whole_image
    from conftest import tiny

    d = imagenet_folder(tmp_path / "v", per_class=2)
    thin_png(d / "n01" / "thin.png", 400000, 1)  # 1.2 KB of PNG
    src = ImageFolder(d)
    i = next(k for k in range(len(src)) if src.path(k).endswith("thin.png"))
    view, label, _, _ = CenterCropDataset(src, 37, 32)[i]  # validation: the crop's box only
    assert view.shape == (32, 32, 3) and label == 0
    with pytest.raises(BadImage, match=r"extreme aspect ratio \(400000x1 would be 14800000x37"):
        check_whole_image(400000, 1, 37)
    ev = Evaluator(tiny("A", num_classes=3, crop_size=32), batch_size=4, workers=0, precision="fp32",
                   progress=False)
    post = ev.run(src, ["dense", "multicrop"], [37])
    assert post.valid.sum() == len(src) - 1 and not post.valid[i]


def test_colour_mean_weighs_every_image_alike(tmp_path):
    for i in range(3):
        (tmp_path / "d" / "c").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 100), (0, 0, 0)).save(tmp_path / "d" / "c" / f"{i}.png")
    Image.new("RGB", (3000, 2), (200, 100, 40)).save(tmp_path / "d" / "c" / "thin.png")  # 6000 px vs 10000
    st = colour.compute(ImageFolder(tmp_path / "d"), progress=False)
    np.testing.assert_allclose(st.mean, (50, 25, 10), atol=1e-6)  # (3 x black + 1 x colour) / 4 images


def test_shard_offsets_that_lie(folder, tmp_path):
    pack(ImageFolder(folder), tmp_path / "sh", shard_size="10", progress=False)
    off = np.load(tmp_path / "sh" / "shards.offsets.npy")
    np.save(tmp_path / "sh" / "shards.offsets.npy", off[:5])
    with pytest.raises(UserError, match=r"offsets of shape \(5, 6\) do not match 18 samples"):
        open_source(tmp_path / "sh")
    off[3, 2] = 2**40  # an image "size" of 1 TB
    np.save(tmp_path / "sh" / "shards.offsets.npy", off)
    from verydeep.transforms import BadImage
    with pytest.raises(BadImage, match="malformed shard index"):
        open_source(tmp_path / "sh").read(3)


@pytest.mark.parametrize("smin,smax", [(64, 64), (60, 100)])
def test_images_in_memory_give_the_views_of_the_files(folder, smin, smax):
    """The in-memory cache draws each sample's views from the same generator as the file path: the same crops,
    flips and colour shifts; a fixed S's whole-image rescale differs from a crop-box resize by rounding only."""
    tf = TrainTransform(smin, smax, crop=56)
    files = list(TrainLoader(ImageFolder(folder), tf, LoaderConfig(batch_size=4, workers=0, seed=3,
                                                                   cache=False)).epoch(1))
    loader = TrainLoader(ImageFolder(folder), tf, LoaderConfig(batch_size=4, workers=2, seed=3, cache=True))
    memory = list(loader.epoch(1))
    assert loader.cache is not None and loader.loader.num_workers == (0 if smin == smax else 2)
    assert len(files) == len(memory)
    for a, b in zip(files, memory):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.shifts, b.shifts) and torch.equal(a.labels, b.labels)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert (a.images.int() - b.images.int()).abs().max() <= (1 if smin == smax else 0)


def test_a_folder_of_splits_is_never_read_as_classes(tmp_path):
    # train/, val/, test/ at the top: the split is required, and a misspelt one is named against those that exist
    for split in ("train", "val", "test"):
        imagenet_folder(tmp_path / "d" / split, per_class=1)
    with pytest.raises(UserError, match=r"holds the splits train, val, test; give --split"):
        open_source(tmp_path / "d")
    with pytest.raises(UserError, match=r"no split 'tset' \(it holds train, val, test\)"):
        open_source(tmp_path / "d", split="tset")
    assert open_source(tmp_path / "d", split="val").classes == ["n01", "n02", "n03"]


def test_limit_samples_every_class(folder):
    # --limit N: a seeded class-stratified sample, not the first N images (which would be the first classes only)
    from verydeep.data.open import sample

    src = ImageFolder(folder)
    sub = sample(src, 6, seed=0)
    labels = [src.labels()[i] for i in sub.indices]
    assert len(labels) == 6 and np.bincount(labels).tolist() == [2, 2, 2]
    assert list(sample(src, 6, seed=0).indices) == list(sub.indices)  # seeded
    with pytest.raises(UserError, match="positive"):
        sample(src, 0)


def test_pack_decodes_every_image_and_counts_the_unusable(tmp_path, capsys):
    # a text file and a truncated JPEG named .jpg are skipped and counted, not packed
    cls = tmp_path / "data" / "n01"
    expected = bad_files(cls)
    index = pack(ImageFolder(tmp_path / "data"), tmp_path / "shards", progress=False)
    assert index["skipped"] == sum(v == "skip" for v in expected.values())
    assert index["count"] == sum(v == "ok" for v in expected.values())


def test_validation_kept_in_memory_is_read_once_and_serves_the_same_batches(folder):
    from verydeep.data import CenterCropDataset, eval_loader

    src = ImageFolder(folder)
    reads = []
    read = src.read
    src.read = lambda i: reads.append(i) or read(i)
    plain = [b for b in eval_loader(CenterCropDataset(src, 37, 32), 4, 0, rank=1, world=2)]
    n = len(reads)
    kept = eval_loader(CenterCropDataset(src, 37, 32), 4, 2, rank=1, world=2, in_memory=True)
    assert len(reads) == 2 * n and kept.num_workers == 0  # read now, this rank's half only, in this process
    for _ in range(2):  # every epoch after: from memory, the same crops, labels and order
        got = list(kept)
        assert len(got) == len(plain) and len(reads) == 2 * n
        for a, b in zip(got, plain):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def _start_methods_of_workers(folder) -> list[str]:
    loader = TrainLoader(ImageFolder(folder), SMALL, LoaderConfig(batch_size=4, workers=2, cache=True))
    next(loader.epoch(0))
    return [w._start_method or multiprocessing.get_start_method() for w in loader.loader._iterator._workers]


def test_loader_workers_are_forked_even_in_a_spawned_process(folder):
    """Forked, they share the decoded images with the process that made them (data.loader.worker_options). A study
    task runs in a spawned process (jobs.py), whose workers were spawned too, each with a copy of the image cache: a
    jittered study task took 10.7 GB instead of 2.1."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_start_methods_of_workers, folder).result() == ["fork", "fork"]


def _cache_file(folder):
    found = list((folder / ".verydeep-cache").glob("S64-*.bin"))
    assert len(found) <= 1
    return found[0] if found else None


def test_decoded_images_kept_on_disk_serve_the_same_batches_and_follow_the_files(folder, caplog):
    """data/cache.py: the first fixed-S run writes the decoded images beside the data, the next reads them (the same
    batches, no decode); an edited image rebuilds the file, and a damaged file is rebuilt, never trusted."""
    from verydeep.data.loader import ImageCache

    tf = TrainTransform(64, 64, crop=56)
    cfg = LoaderConfig(batch_size=4, workers=0, seed=3, cache=True)
    first = TrainLoader(ImageFolder(folder), tf, cfg)
    assert not first.cache.from_disk and _cache_file(folder) is not None
    again = TrainLoader(ImageFolder(folder), tf, cfg)
    assert again.cache.from_disk and again.cache.sizes == first.cache.sizes
    cwd = os.getcwd()
    try:  # the folder named relative to another working directory: the same file
        os.chdir(folder.parent)
        assert ImageCache(ImageFolder(folder.name), tf).from_disk
    finally:
        os.chdir(cwd)
    for a, b in zip(first.epoch(1), again.epoch(1), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    # ImageFolder does not take the cache's dot folder for a class
    assert ImageFolder(folder).classes == ["n01", "n02", "n03"]

    target = folder / "n01" / "n01_0.JPEG"
    write_jpeg(target, photo(90, 120, seed=99))  # another picture in the same file
    edited = ImageCache(ImageFolder(folder), tf)
    assert not edited.from_disk
    fresh = ImageCache(ImageFolder(folder), tf, disk=False)
    i = ImageFolder(folder).paths.index("n01/n01_0.JPEG")
    assert np.array_equal(edited.images[i], fresh.images[i]) and ImageCache(ImageFolder(folder), tf).from_disk

    path = _cache_file(folder)
    good = path.read_bytes()
    old, now = path.parent / f".{path.name}.killed.tmp", path.parent / f".{path.name}.writing.tmp"
    for f in (old, now):
        f.write_bytes(b"half a write")
    os.utime(old, (1, 1))  # left by a write killed long ago; `now` may be another process's write in progress
    for damage in (good[:-1], good[:8] + (2**62).to_bytes(8, "little") + good[16:], b"VDIMGS01" + b"\0" * 8 + b"[]",
                   good.replace(b'"shapes": [[', b'"shapes": [[-', 1)):
        path.write_bytes(damage)
        with caplog.at_level(logging.WARNING, "verydeep.data"):
            caplog.clear()
            rebuilt = ImageCache(ImageFolder(folder), tf)
        assert not rebuilt.from_disk and "unusable image cache" in caplog.text
        assert all(np.array_equal(a, b) for a, b in zip(rebuilt.images, fresh.images))
        assert path.read_bytes() == good  # written again
    assert not old.exists() and now.exists()
    assert not ImageCache(ImageFolder(folder), TrainTransform(60, 100, crop=56)).from_disk  # jittered S: memory only


def test_decoded_images_are_not_kept_for_a_bad_image_or_a_read_only_folder(folder, monkeypatch):
    from verydeep.data.loader import ImageCache

    tf = TrainTransform(64, 64, crop=56)
    bad_files(folder / "n02")
    # a skip must not outlive its cause
    assert ImageCache(ImageFolder(folder), tf).images and _cache_file(folder) is None
    for f in (folder / "n02").iterdir():
        if not f.name.startswith("n02_"):  # the bad files gone: only the fixture's own images left
            f.unlink()
    import verydeep.utils as U

    def read_only(path, write):
        raise U.write_error(path, PermissionError(13, "Permission denied"))

    monkeypatch.setattr("verydeep.data.cache.atomic_write", read_only)
    kept = ImageCache(ImageFolder(folder), tf)
    assert kept.images and not kept.from_disk and _cache_file(folder) is None
