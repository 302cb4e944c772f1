"""Shared helpers: the freed-memory setting (whether it is in force, not how fast it is: that is measured in
benchmarks/malloc_faults.py, since page-fault counts depend on the allocator's state and the machine), atomic writes
under the user's umask, and one line for a full disk."""
import errno
import json
import os
import subprocess
import sys

import pytest

from verydeep.errors import UserError
from verydeep.utils import atomic_write

SCRIPT = "import json; from verydeep.utils import keep_freed_memory; print(json.dumps(keep_freed_memory()))"


def in_force(env_value):
    env = {k: v for k, v in os.environ.items() if k != "VERYDEEP_MALLOC"}
    if env_value:
        env["VERYDEEP_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_setting_is_in_force_unless_turned_off():
    assert in_force(None) is True  # glibc accepted both mallopt settings
    assert in_force("system") is False


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == mode


def test_atomic_write_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    (tmp_path / "f").write_text("old")

    def full(tmp):
        open(tmp, "w").write("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"/f: cannot write: No space left on device"):
        atomic_write(tmp_path / "f", full)
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "old"


def test_kernel_caches_are_bounded_before_the_first_convolution_unless_the_environment_says():
    # the effect (a process's memory over many input shapes) is measured in BENCHMARKS.md, not here: the wiring is
    # what can be tested, in a fresh process where no kernel was made yet
    script = ("import os, torch; from verydeep.models import vgg; from verydeep.fast import FastVGG; "
              "net = FastVGG(vgg('A', width=0.125, fc_width=16, crop_size=32).eval(), 'fp32', 'cpu'); "
              "net(torch.zeros(1, 3, 32, 32)); "
              "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["128", "128"]
    out = subprocess.run([sys.executable, "-c", script], env={**env, "LRU_CACHE_CAPACITY": "7"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["128", "7"]
