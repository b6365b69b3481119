"""Several processes (torchrun, gloo on CPU): the switch decision is the same on every rank."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_every_rank_switches_at_the_same_step(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()),
         os.path.join(HERE, "scripts", "ddp_switch.py"), "--output_dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Rank 1's detector fired at step 3, rank 0's would have at step 6: both switch at 3.
    assert [r["switch_step"] for r in ranks] == [3, 3]
    for r in ranks:
        assert r["rows"] == [8, 8, 8, 4, 4, 4, 4, 4]
