"""Entry point for `smec eval` under a launcher (sharded encoding, search on rank 0).

    python launch/eval.py --config configs/scifact-minilm.yaml
    accelerate launch --num_processes 8 launch/eval.py --config CONFIG --stage runs/x/stages/stage4
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 launch/eval.py --config ...   # CPU test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smec_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
