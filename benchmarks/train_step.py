"""Training-step throughput (forward, backward, fused SGD step) of VGG-16 at 224 and of the miniature study's nets,
fp32 and bf16, beside the same run's GEMM rate. The code is `verydeep bench`'s (src/verydeep/bench.py):

    python benchmarks/train_step.py [--repeats 5] [--train-batch 32] [--json out.json]
"""
import sys

from verydeep.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--only", "train", *sys.argv[1:]]))
