import os

os.environ.setdefault("KERAS_BACKEND", "torch")
# the thread count of inference follows the machine's load (share.py): never in tests, whose results must not
os.environ["VERYDEEP_SHARE"] = "off"

import pytest
import torch

import verydeep as vd


def tiny(name="A", **kw):
    """A narrow net with the real topology: every code path, milliseconds per call."""
    opts = dict(num_classes=7, crop_size=64, width=1 / 16, fc_width=32, init="glorot")
    opts.update(kw)
    return vd.vgg(name, **opts).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
