"""One rank of a 2-rank `smec train` misbehaves at stage 1 step 3, the other is healthy.

    torchrun --nproc_per_node 2 tests/scripts/rank_fault.py MODE smec-train-args...

``MODE`` is ``crash`` (rank 1 raises) or ``hang`` (rank 1 sleeps for an hour inside the
step, as a stuck GPU or a dead node would look to the others). Everything else is the real
``smec train``.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from smec_dist.cli import main  # noqa: E402
from smec_dist.train.pairs import PairTask  # noqa: E402

MODE = sys.argv[1]
original = PairTask.loss


def loss(self, phase, step):
    if int(os.environ.get("RANK", "0")) == 1 and phase.name.startswith("stage1:") and step == 3:
        if MODE == "crash":
            raise RuntimeError("injected fault on rank 1")
        time.sleep(3600)
    return original(self, phase, step)


PairTask.loss = loss
sys.exit(main(["train", *sys.argv[2:]]))
