"""Cost of the paper's test protocols (PAPER.md section 3) for VGG-16: seconds per image for dense (whole image +
flip) and multi-crop (5x5 grid x 2 flips) at three scales (256, 384, 512) on a 500x375 image, the multiply-adds
each needs and the multi-crop / dense ratio. The code is `verydeep bench`'s (src/verydeep/bench.py):

    python benchmarks/protocols.py [--repeats 6] [--json out.json]
"""
import sys

from verydeep.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--only", "protocols", *sys.argv[1:]]))
