"""Set up `smec train` resuming from a checkpoint and compare the loaded backbone with the
checkpoint's own weights (DeepSpeed's zero_to_fp32 of the original folder).

    torchrun --nproc_per_node N tests/scripts/universal_probe.py ORIGINAL_STEP_FOLDER smec-train-args...

Prints ``max abs difference <x> over <n> tensors`` on rank 0; exits 1 if they differ.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from smec_dist import dist  # noqa: E402
from smec_dist.config import load_config  # noqa: E402
from smec_dist.recipes.e2e import E2EJob  # noqa: E402


def main(original: str, overrides: list[str]) -> int:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    job = E2EJob(load_config(None, overrides))
    job.setup()  # loads the checkpoint (through a universal conversion when the world size changed)
    loaded = {k: v.detach().float().cpu() for k, v in job.acc.unwrap_model(job.model).state_dict().items()}
    want = get_fp32_state_dict_from_zero_checkpoint(original, tag="pytorch_model")
    diff = max(float((loaded[k] - want[k].float()).abs().max()) for k in want)
    if dist.is_main():
        print(f"max abs difference {diff:.3g} over {len(want)} tensors", flush=True)
    job.cleanup()
    return 0 if diff < 1e-6 and set(want) <= set(loaded) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
