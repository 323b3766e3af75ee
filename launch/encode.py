"""Entry point for `smec encode` under a launcher.

    python launch/encode.py --config configs/scifact-minilm.yaml
    accelerate launch --num_processes 8 launch/encode.py --config configs/scifact-minilm.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 launch/encode.py --config ...   # CPU test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smec_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["encode", *sys.argv[1:]]))
