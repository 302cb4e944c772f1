"""The paper, in one place: Simonyan & Zisserman's tables, figures and rules (../shared/PAPER.md), transcribed once.
Models, training, evaluation, the study, its report, the benchmark and the tests all read them from here; nothing
here depends on the rest of verydeep.

Scales are given for 224 crops; `at_crop` scales them to another crop size (the miniature study's 64: 256 -> 73)."""
from __future__ import annotations

import math

# ------------------------------------------------------------------------------------------------ section 1
CROP = 224                     # the fixed-size input crop (section 1)
POOL_STRIDE = 32               # five 2x2 max-pools: a score-map cell is 32 input pixels (section 3)

# Table 1: a block is a list of (out_channels, kernel) conv layers followed by a 2x2 max-pool.
BLOCKS: dict[str, tuple] = {
    "A": ([(64, 3)], [(128, 3)], [(256, 3)] * 2, [(512, 3)] * 2, [(512, 3)] * 2),
    "B": ([(64, 3)] * 2, [(128, 3)] * 2, [(256, 3)] * 2, [(512, 3)] * 2, [(512, 3)] * 2),
    # Config C: the third conv of blocks 3-5 is 1x1.
    "C": ([(64, 3)] * 2, [(128, 3)] * 2, [(256, 3)] * 2 + [(256, 1)], [(512, 3)] * 2 + [(512, 1)],
          [(512, 3)] * 2 + [(512, 1)]),
    "D": ([(64, 3)] * 2, [(128, 3)] * 2, [(256, 3)] * 3, [(512, 3)] * 3, [(512, 3)] * 3),
    "E": ([(64, 3)] * 2, [(128, 3)] * 2, [(256, 3)] * 4, [(512, 3)] * 4, [(512, 3)] * 4),
    # Section 4.1 ablation: B with each pair of 3x3 layers replaced by one 5x5 layer.
    "B-shallow": ([(64, 5)], [(128, 5)], [(256, 5)], [(512, 5)], [(512, 5)]),
}
FC_WIDTH = 4096
CLASSES = 1000
# Krizhevsky et al.'s LRN after conv1_1's ReLU in A-LRN: size 5, alpha 1e-4, beta 0.75, k 2.
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

# Table 2: parameters (millions) and the exact counts with biases and 1000 classes; multiply-adds at 224 (G).
TABLE2_PARAMS_M = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
TABLE2_PARAMS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952, "D": 138_357_544,
                 "E": 143_667_240}
TABLE2_MACS_G = {"A": 7.61, "B": 11.31, "C": 11.77, "D": 15.47, "E": 19.63}

# ------------------------------------------------------------------------------------------------ section 2
BATCH = 256
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
DROPOUT = 0.5                  # on fc6 and fc7
LR = 1e-2                      # divided by 10 when validation accuracy stops improving ...
LR_DECAYS = 3                  # ... three times in all
MAX_EPOCHS = 74                # 370K iterations
INIT_STD = 0.01                # random init N(0, 0.01), zero biases (net A)
FINETUNE_LR = 1e-3             # S = 384 from the S = 256 net; the jittered net from the S = 384 net
COLOUR_STD = 0.1               # AlexNet's PCA colour shift: alpha ~ N(0, 0.1)
# Deeper nets start from net A's first four conv layers and its three FC layers.
INIT_FROM_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
# Training stages: (Smin, Smax) and the learning rate: S = 256 from scratch (or from A), S = 384 fine-tuned from
# the S = 256 net, scale jittering S in [256, 512] fine-tuned from the S = 384 net.
STAGES: dict[str, tuple[tuple[int, int], float]] = {
    "scratch": ((256, 256), LR), "s384": ((384, 384), FINETUNE_LR), "jitter": ((256, 512), FINETUNE_LR)}


def at_crop(s: int, crop: int = CROP) -> int:
    """A scale given for 224 crops, at another crop size."""
    return round(s * crop / CROP)


def stage_scale(stage: str, crop: int = CROP) -> tuple[int, int]:
    """(Smin, Smax) of a training stage at this crop size."""
    (smin, smax), _ = STAGES[stage]
    return at_crop(smin, crop), at_crop(smax, crop)


def scale_text(train_scale: tuple[int, int] | None) -> str:
    """S as the paper's tables write it: 256, or [256;512] for a jittered net."""
    if not train_scale:
        return "?"
    return str(train_scale[0]) if train_scale[0] == train_scale[1] else f"[{train_scale[0]};{train_scale[1]}]"


# ------------------------------------------------------------------------------------------------ section 3
GRID = 5                       # multi-crop: a 5x5 grid of crops ...
CROPS_PER_SCALE = 2 * GRID * GRID  # ... and their flips: 50 per scale
MULTI_SCALES = (256, 384, 512)     # Table 5's Q, and section 7's feature scales


def default_test_scale(crop: int = CROP) -> int:
    """Q when nothing else is known: 256 for a 224 crop (the S = 256 nets' Q = S)."""
    return at_crop(256, crop)


def test_scales(train_scale: tuple[int, int], crop: int = CROP, multi: bool = False) -> list[int]:
    """Section 5's test scales from the training scale: one scale (Table 3), Q = S or 0.5 (Smin + Smax);
    several (Table 4), {S - 32, S, S + 32} or {Smin, 0.5 (Smin + Smax), Smax}. 32 is for 224 crops."""
    smin, smax = train_scale
    mid = (smin + smax) // 2
    if not multi:
        return [mid]
    if smin == smax:
        d = at_crop(32, crop)
        return [max(crop, smin - d), smin, smin + d]
    return [smin, mid, smax]


def multi_scales(crop: int = CROP) -> list[int]:
    return [at_crop(q, crop) for q in MULTI_SCALES]


def pooled_size(size: int, kernel: int = 2, stride: int = 2, ceil: bool = False) -> int:
    """A max-pool's output size: PyTorch and Keras round down; Caffe, which the authors used, rounds up."""
    return (math.ceil if ceil else math.floor)((size - kernel) / stride) + 1


# ------------------------------------------------------------------------------------------------ section 5
# Top-1 / top-5 val error (%), by (net, S as written in the tables).
TABLE3 = {("A", "256"): (29.6, 10.4), ("A-LRN", "256"): (29.7, 10.5), ("B", "256"): (28.7, 9.9),
          ("C", "256"): (28.1, 9.4), ("C", "384"): (28.1, 9.3), ("C", "[256;512]"): (27.3, 8.8),
          ("D", "256"): (27.0, 8.8), ("D", "384"): (26.8, 8.7), ("D", "[256;512]"): (25.6, 8.1),
          ("E", "256"): (27.3, 9.0), ("E", "384"): (26.9, 8.7), ("E", "[256;512]"): (25.5, 8.0)}
TABLE4 = {("B", "256"): (28.2, 9.6), ("C", "256"): (27.7, 9.2), ("C", "384"): (27.8, 9.2),
          ("C", "[256;512]"): (26.3, 8.2), ("D", "256"): (26.6, 8.6), ("D", "384"): (26.5, 8.6),
          ("D", "[256;512]"): (24.8, 7.5), ("E", "256"): (26.9, 8.7), ("E", "384"): (26.7, 8.6),
          ("E", "[256;512]"): (24.8, 7.5)}
# Table 5 (S jittered, Q = {256, 384, 512}), by (net, protocol).
TABLE5 = {("D", "dense"): (24.8, 7.5), ("D", "multicrop"): (24.6, 7.5), ("D", "dense+multicrop"): (24.4, 7.2),
          ("E", "dense"): (24.8, 7.5), ("E", "multicrop"): (24.6, 7.4), ("E", "dense+multicrop"): (24.4, 7.1)}
# Table 6: D and E fused, multi-scale, by protocol.
TABLE6 = {"dense": (24.0, 7.1), "multicrop": (23.9, 7.2), "dense+multicrop": (23.7, 6.8)}
SHALLOW_B_GAP = 7.0            # section 4.1: shallow B's top-1 error is 7 points above B's (centre crop)

# ------------------------------------------------------------------------------------------------ section 6
# Table 8 (S = 384, centre crop, ground-truth class): localisation error (%), by (regression, fine-tuned layers).
TABLE8 = {("scr", "fc"): 36.4, ("pcr", "fc"): 34.3, ("pcr", "all"): 33.1}
IOU_CORRECT = 0.5              # a box is right when IoU > 0.5 with a ground-truth box of its class

# ------------------------------------------------------------------------------------------------ section 7
# Table 11, Caltech-101 mean class recall (%), 30 training images per class, 3 splits: mean and std.
TABLE11_CALTECH101 = {"D": (91.8, 1.0), "E": (92.3, 0.5), "D&E": (92.7, 0.5)}
TABLE11_VOC2007 = {"D": 89.3, "E": 89.3, "D&E": 89.7}
FEATURE_LAYER = "relu7"        # the penultimate 4096-D activations
CALTECH_TRAIN_PER_CLASS = {"caltech101": 30, "caltech256": 60}
CALTECH_TEST_PER_CLASS = 50    # Caltech-101's usual protocol: at most 50 test images per class
