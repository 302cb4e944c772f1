"""Where a VGG-16 call's time goes, layer by layer, in verydeep and in OpenVINO (issue 20): verydeep's chain timed op
by op (each op's wall time, PyTorch's dispatch included), OpenVINO's compiled model by its own per-node counters
(PERF_COUNT), and both whole calls; medians over interleaved rounds. Needs openvino (and nncf for int8) importable.

    PYTHONPATH=<openvino + nncf> python benchmarks/layer_profile.py --precision bf16 --batch 1

int8 on both sides is calibrated on noise (speed only), as `verydeep bench` does."""
from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import numpy as np
    import openvino as ov
    import torch

    from verydeep.export import export_onnx
    from verydeep.fast import FastVGG
    from verydeep.models import vgg
    from verydeep.provenance import device_name

    torch.manual_seed(0)
    m = vgg("D").eval()
    x = np.random.default_rng(0).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
    calib = [np.random.default_rng(i).standard_normal((1, 3, 224, 224), dtype=np.float32) for i in range(8)]
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(m, Path(tmp) / "vgg16.onnx")
        graph = core.read_model(str(Path(tmp) / "vgg16.onnx"))
        if a.precision == "int8":
            import nncf

            graph = nncf.quantize(graph, nncf.Dataset(calib), subset_size=len(calib))
        graph.reshape({graph.inputs[0].any_name: [a.batch, 3, 224, 224]})
        req = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if a.precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERF_COUNT": True}).create_infer_request()
    net = FastVGG(m, a.precision)
    xt = torch.from_numpy(x)
    if a.precision == "int8":
        net.calibrate(torch.from_numpy(np.concatenate(calib)))

    def ours() -> tuple[list, list]:
        """verydeep's steps: (name, callable) from the float input to the output, as score_map runs them."""
        if a.precision == "int8":
            q = net._quant
            return ["quantize input"] + [type(o).__name__ for o in q.ops], [q.qin.quantize] + list(q.ops)
        y0 = xt.to(net.dtype).contiguous(memory_format=torch.channels_last)
        ops = net._ops_for(y0.shape)
        fns = [lambda y: y.to(net.dtype).contiguous(memory_format=torch.channels_last)]
        fns += [(lambda y, op=op: torch.ops.mkldnn._convolution_pointwise(y, op[0], op[1], op[2], [1, 1], [1, 1], 1,
                                                                           op[3], [], ""))
                if isinstance(op, tuple) else op for op in ops]
        return ["convert input"] + ["conv" if isinstance(op, tuple) else type(op).__name__ for op in ops], fns

    ov_nodes: dict = collections.defaultdict(list)
    ov_order: list = []
    mine: dict = collections.defaultdict(list)
    whole = {"verydeep": [], "openvino": []}
    with torch.inference_mode():
        net.score_map(xt)  # packs the weights for this size (int8: and calibrates)
        names, fns = ours()
        for _ in range(3):
            req.infer({0: x})
        for r in range(a.rounds):
            for side in (("verydeep", "openvino") if r % 2 == 0 else ("openvino", "verydeep")):
                for _ in range(a.calls):
                    t0 = time.perf_counter()
                    if side == "verydeep":
                        net.score_map(xt)
                    else:
                        req.infer({0: x})
                    whole[side].append(time.perf_counter() - t0)
                    if side == "openvino":
                        for p in req.profiling_info:
                            if p.status == p.Status.EXECUTED:
                                key = (p.node_name, p.exec_type)
                                if key not in ov_nodes:
                                    ov_order.append(key)
                                ov_nodes[key].append(p.real_time.total_seconds() * 1e3)
            for _ in range(a.calls):  # verydeep op by op
                y = xt
                for i, f in enumerate(fns):
                    t0 = time.perf_counter()
                    y = f(y)
                    mine[i].append((time.perf_counter() - t0) * 1e3)
    ms = {k: 1e3 * statistics.median(v) for k, v in whole.items()}
    print(f"{device_name('cpu')}; {torch.get_num_threads()} threads; torch {torch.__version__}, openvino "
          f"{ov.__version__.split('-')[0]}; VGG-16 {a.precision}, batch {a.batch}; medians of {a.rounds} x "
          f"{a.calls} calls")
    print(f"whole call: verydeep {ms['verydeep']:.2f} ms, OpenVINO {ms['openvino']:.2f} ms "
          f"(verydeep / OpenVINO speed {ms['openvino'] / ms['verydeep']:.3f}x)")
    left = [(n, statistics.median(mine[i])) for i, n in enumerate(names)]
    right = [(f"{n[:28]} ({e})", statistics.median(ov_nodes[(n, e)])) for n, e in ov_order]
    right = [(n, t) for n, t in right if t >= 0.005]
    print(f"sum of steps: verydeep {sum(t for _, t in left):.2f} ms, OpenVINO nodes {sum(t for _, t in right):.2f}"
          " ms\n")
    print(f"{'verydeep step':<16} {'ms':>7}    {'OpenVINO node (kernel)':<58} {'ms':>7}")
    for i in range(max(len(left), len(right))):
        ln, lt = left[i] if i < len(left) else ("", None)
        rn, rt = right[i] if i < len(right) else ("", None)
        print(f"{ln:<16} {'' if lt is None else f'{lt:7.3f}':>7}    {rn:<58} {'' if rt is None else f'{rt:7.3f}':>7}")


if __name__ == "__main__":
    main()
