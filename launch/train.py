"""Entry point for end-to-end training (`smec train`) under any launcher.

    python launch/train.py --config configs/qwen2-7b-lora-zero3.yaml                      # one process
    accelerate launch --config_file configs/accelerate/1node-8gpu-zero3.yaml \
        launch/train.py --config configs/qwen2-7b-lora-zero3.yaml                          # 1 node x 8 GPUs
    torchrun --nproc_per_node 8 launch/train.py --config ... e2e.deepspeed=ds_configs/zero3.json
    torchrun --nproc_per_node 2 launch/train.py --config configs/tiny-qwen2-cpu.yaml       # CPU test (gloo)
    python launch/train.py --config ... --resume auto                                     # after a kill / requeue
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smec_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
