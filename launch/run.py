"""Entry point for `smec run` under a launcher.

    python launch/run.py --config configs/scifact-minilm.yaml
    accelerate launch --num_processes 8 launch/run.py --config configs/scifact-minilm.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 launch/run.py --config ...   # CPU test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smec_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
