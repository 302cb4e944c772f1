"""`verydeep bench`: the table and JSON it promises (GEMM rate, verydeep's modes beside the peers, parity on real
images), checked on a minimal run; its figures themselves live in BENCHMARKS.md, not in timed unit tests."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import verydeep as vd
from verydeep import fast
from verydeep.bench import BenchConfig, PeakMemory
from verydeep.errors import ConfigError
from verydeep.models import model_config, multiply_adds
from verydeep.precision import BF16_SKIPPED, native_bf16
from verydeep.cli import main
from conftest import tiny


def test_bench_inference_and_peers_json(tmp_path, capsys):
    # the bench's own mechanics on VGG-16 at width x1/8 (seconds, not the minute the full net takes here); the
    # full net's figures are BENCHMARKS.md's
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "gemm,inference,peers", "--batches", "2", "--repeats", "1", "--no-compile",
                 "--width", "0.125", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    modes = {r["mode"] for r in res["rows"]}
    assert res["gemm_gflops"]["fp32"] > 0
    assert {"verydeep eager-fp32", "verydeep fp32", "verydeep int8", "verydeep fp32-streams"} <= modes
    # bf16 is timed where the CPU computes it natively; where PyTorch would emulate it, one line says it is skipped
    bf16 = {"verydeep bf16", "verydeep bf16-streams"}
    if native_bf16(torch.device("cpu")):
        assert res["gemm_gflops"]["bf16"] > 0 and bf16 <= modes
    else:
        assert "bf16" not in res["gemm_gflops"] and not bf16 & modes
    assert any(m.startswith("onnxruntime ") and "fp32" in m for m in modes)
    assert not any(m.startswith("keras") for m in modes)  # Keras' VGG16 has one width
    macs = multiply_adds(model_config("D", width=0.125, fc_width=512), 224)
    # conv and FC widths both at 1/8: 1/64 of VGG-16's multiply-adds, but 1/8 for conv1_1 (3 input channels) and
    # fc8 (1000 outputs)
    conv1_1, fc8 = 224 * 224 * 9 * 3 * 64, 4096 * 1000
    assert macs == pytest.approx((15.470264e9 - conv1_1 - fc8) / 64 + (conv1_1 + fc8) / 8, rel=1e-5)
    for r in res["rows"]:
        assert r["batch"] == 2 and r["images_per_s"] > 0 and r["range"][0] <= r["images_per_s"] <= r["range"][1]
        assert r["gflops"] == pytest.approx(2 * macs / 1e9 * r["images_per_s"], rel=1e-6)
    text = capsys.readouterr().out
    assert "same-run GEMM rate" in text and "x ONNX Runtime fp32" in text and "width x0.125" in text
    assert "keras' VGG16 is full-width only" in text
    assert (BF16_SKIPPED in text) != native_bf16(torch.device("cpu"))


def test_keras_peer_runs_vgg16(capsys):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs another backend here")
    from verydeep.bench import keras_runner

    (r,) = keras_runner(BenchConfig(device="cpu"))
    assert r.section == "peers" and r.mode.startswith(f"keras {keras.__version__} VGG16")
    assert tuple(r.run(1).shape) == (1, 1000)


def test_bench_width_is_checked():
    for w in (0, 1.5):
        with pytest.raises(ConfigError, match=f"--width {w}: choose a multiplier in"):
            BenchConfig(width=w)


def test_bench_parity_on_real_images(tmp_path, monkeypatch):
    monkeypatch.setattr(fast, "WINOGRAD_MIN_CHANNELS", 1)  # the tiny net's fp32 chain by Winograd, as VGG-16's is
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.jpg")
    m = tiny("A", num_classes=2)
    vd.save(m, tmp_path / "a.safetensors")
    out = tmp_path / "p.json"
    assert main(["bench", "--only", "parity", "--weights", str(tmp_path / "a.safetensors"), "--data",
                 str(tmp_path / "data"), "--parity-protocols", "center,dense,multicrop", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    share = [r for r in rows if r["protocol"] == "rechecked"]
    assert len(share) == 1 and 0 <= share[0]["rechecked_share"] <= 1 and share[0]["calibration_images"] == 12
    rows = [r for r in rows if r["protocol"] != "rechecked"]
    precisions = ("fp32", "int8", "int8-raw") + (("bf16",) if native_bf16(torch.device("cpu")) else ())
    assert {(r["precision"], r["protocol"]) for r in rows} == {(p, q) for p in precisions
                                                              for q in ("center", "dense", "multicrop")}
    for r in rows:
        assert r["images"] == 12 and 0 <= r["top1_agreement"] <= 1 and 0 <= r["max_posterior_diff"] <= 1
        if r["precision"] == "fp32":  # Winograd against direct convolution
            assert r["top1_agreement"] == 1 and r["max_posterior_diff"] < 1e-4


def test_bench_refuses_a_parity_protocol_that_is_not_one_pass():
    with pytest.raises(ConfigError, match="--parity-protocols dense.multicrop: choose among"):
        BenchConfig(parity_protocols=["dense+multicrop"])


def test_cpu_load_runs_beside_and_stops():
    import multiprocessing as mp

    from verydeep.bench import BenchConfig, cpu_load

    with cpu_load(2):
        assert len([p for p in mp.active_children() if p.is_alive()]) >= 2
    assert not [p for p in mp.active_children() if p.is_alive()]
    with pytest.raises(Exception, match="--load must be 0 or more"):
        BenchConfig(load=-1)


def test_peak_memory_sees_an_allocation():
    import mmap

    with PeakMemory("cpu") as mem:
        block = mmap.mmap(-1, 64 * 2**20)  # fresh pages from the kernel, whatever malloc keeps
        for i in range(0, len(block), 4096):
            block[i] = 1
    block.close()
    assert 60 < mem.peak_mib < 1000


def test_unknown_bench_section_is_one_line(capsys):
    assert main(["bench", "--only", "nosuch"]) == 2
    assert "--only nosuch: sections are gemm, inference" in capsys.readouterr().err


def test_train_step_row_has_both_gemm_ratios():
    import statistics

    from verydeep.bench import train_step

    r = train_step("A", 32, 0.125, 16, 4, "fp32", 2, "cpu", {"fp32": 100.0})
    assert r["section"] == "train" and r["batch"] == 4 and r["images_per_s"] > 0
    assert r["gemm_ratio"] == pytest.approx(r["gflops"] / 100.0)  # against the start-of-run GEMM given
    # against the GEMM timed before each step: the median of the per-step ratios
    flops = 3 * 2 * r["macs_per_image"] * r["batch"]
    want = statistics.median(flops / s / 1e9 / g for s, g in zip(r["step_seconds"], r["gemm_each"]))
    assert len(r["gemm_each"]) == len(r["step_seconds"]) == 2 and r["beside_ratio"] == pytest.approx(want)


def test_openvino_peer_is_skipped_in_one_line_when_absent(monkeypatch, capsys, tmp_path):
    import builtins

    from verydeep.bench import BenchConfig, openvino_runners

    real = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert openvino_runners(BenchConfig(device="cpu"), None, tmp_path) == []
    assert capsys.readouterr().out == "peers: openvino not installed, skipped (pip install openvino nncf)\n"
