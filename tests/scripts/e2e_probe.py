"""Probes of one end-to-end run, for the 1-process vs 2-rank tests.

    python tests/scripts/e2e_probe.py MODE OUT.pt DATA_DIR GLOBAL_BATCH
    torchrun --nproc_per_node 2 tests/scripts/e2e_probe.py MODE OUT.pt DATA_DIR GLOBAL_BATCH

Runs the real setup of ``smec train`` (Accelerate-prepared tiny Qwen2, full fine-tuning,
DDP when there are 2 ranks) on a BEIR folder ``DATA_DIR/mini``. Modes:

- ``grad``: one step's loss from the real PairTask, backward, head-gradient average; saves
  the backbone and head gradients (rank 0).
- ``grad-queue``: the same after the S-XBM memory received 48 fixed entries, so the loss
  includes hard samples from it.
- ``queue``: trains 5 steps through the real Trainer; every rank saves its queue to
  ``OUT.pt.rank<r>``.
- ``queue-fixed``: the same with the backbone's learning rate at 0, so the queued vectors
  isolate the gather (no optimizer amplification of rounding differences).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from smec_dist import dist  # noqa: E402
from smec_dist.config import load_config  # noqa: E402
from smec_dist.recipes.e2e import E2EJob  # noqa: E402


def main(mode: str, out: str, data_dir: str, global_batch: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(None, [f"data.data_dir={data_dir}", "data.dataset=mini", "model.name=tiny-qwen2",
                             "model.max_length=48", "run.dims=[32,16]", "run.progress=false",
                             f"run.output_dir={Path(out).parent / f'{Path(out).stem}-run{world}'}",
                             "train.topk=8", "train.queue_size=24", "train.ads_noise=1.0",
                             "e2e.backbone=full", f"e2e.per_device_batch={global_batch // world}",
                             "e2e.steps_per_stage=5", "e2e.checkpoint_every=0", "e2e.basis_docs=16",
                             f"e2e.backbone_lr={0 if mode == 'queue-fixed' else 1e-4}"])
    job = E2EJob(cfg)
    job.setup()
    if mode.startswith("queue"):
        job.trainer.phases = job.trainer.phases[:1]
        job.run()
        torch.save(job.task.queue.state_dict(), f"{out}.rank{dist.rank()}")
    else:
        phase = job.trainer.phases[0]
        phase.start()
        if mode == "grad-queue":
            g = torch.Generator().manual_seed(7)
            emb = torch.nn.functional.normalize(torch.randn(48, job.encoder.dim, generator=g), dim=-1)
            job.task.queue.enqueue(emb, torch.arange(48) % len(job.pairs.doc_ids))
        phase.progress(0.0)
        loss = job.task.loss(phase, 0)
        job.engine.backward(loss)
        job.engine.sync_head([p for group in phase.params for p in group["params"]])
        model = job.acc.unwrap_model(job.model)
        grads = {f"backbone.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        grads.update({f"head.{n}": p.grad.detach().clone() for n, p in job.head.named_parameters()
                      if p.grad is not None})
        grads["loss"] = torch.tensor(dist.mean_over_ranks(loss.item()))
        if dist.is_main():
            torch.save(grads, out)
    dist.barrier()
    job.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
