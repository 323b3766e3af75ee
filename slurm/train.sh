#!/bin/bash
# End-to-end SMEC on a cluster: the LLM backbone (LoRA / full / QLoRA) trains with the SMEC head under
# accelerate launch (DeepSpeed ZeRO or DDP), one launcher per node, every GPU of the allocation a rank.
#
#   mkdir -p logs                      # once: Slurm opens logs/ before this script runs
#   sbatch slurm/train.sh configs/qwen2-7b-lora-zero3.yaml [section.key=value ...]
#   sbatch --nodes 2 slurm/train.sh configs/llama3-8b-lora-zero3.yaml          # 2 x 8 GPUs (global batch x 2)
#   ACCEL_CONFIG=configs/accelerate/1node-8gpu-zero2.yaml sbatch slurm/train.sh CONFIG e2e.deepspeed=ds_configs/zero2.json
#
# The accelerate config follows the smec config's e2e.deepspeed (empty: 1node-8gpu-ddp.yaml, zero2.json,
# zero3.json, zero3_offload.json: the matching configs/accelerate/1node-8gpu-*.yaml) unless ACCEL_CONFIG names
# one; --num_machines / --num_processes / --machine_rank / --main_process_ip come from the allocation.
#
# Preemption and time limits: the trainer writes complete-or-ignored checkpoints (every e2e.checkpoint_every
# steps and at each stage end) and this script always passes --resume auto, so the job may be killed at any
# moment and continues from the newest complete checkpoint. 120 s before the time limit Slurm sends USR1 to
# this shell (--signal=B:USR1@120); the trap requeues the job (scontrol requeue), which stops the ranks and
# puts the job back in the queue under the same id; a job requeued after a node failure or preemption
# resumes the same way. Each requeue appends to the same log (--open-mode=append). Resubmitting the same
# config by hand also resumes; start over with a fresh run.output_dir=... .
# The hub model is downloaded by every node on first use: fetch it once beforehand (hf download Qwen/Qwen2-7B)
# into a shared HF_HOME, then HF_HUB_OFFLINE=1 sbatch ... keeps the ranks off the network.
#
# Usual options (override on the sbatch command line):
#SBATCH --job-name=smec-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one launcher per node; accelerate starts the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm/train.sh CONFIG.yaml [section.key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs

# Check the config (and every override) before any node starts, and read e2e.deepspeed from it.
DS=$(python - "$CONFIG" "$@" <<'PY'
import sys
from smec_dist.config import load_config
from smec_dist.errors import SmecError
try:
    print(load_config(sys.argv[1], sys.argv[2:]).e2e.deepspeed)
except SmecError as exc:
    sys.exit(f"smec: error: {exc}")
PY
)
case "$(basename "$DS")" in
  "") DEFAULT_ACCEL=configs/accelerate/1node-8gpu-ddp.yaml ;;
  zero2.json) DEFAULT_ACCEL=configs/accelerate/1node-8gpu-zero2.yaml ;;
  zero3.json) DEFAULT_ACCEL=configs/accelerate/1node-8gpu-zero3.yaml ;;
  zero3_offload.json) DEFAULT_ACCEL=configs/accelerate/1node-8gpu-zero3-offload.yaml ;;
  *) DEFAULT_ACCEL="" ;;
esac
ACCEL_CONFIG=${ACCEL_CONFIG:-$DEFAULT_ACCEL}
if [[ -z "$ACCEL_CONFIG" || ! -f "$ACCEL_CONFIG" ]]; then
  echo "slurm/train.sh: no accelerate config for e2e.deepspeed=$DS; set ACCEL_CONFIG=configs/accelerate/..." >&2
  exit 2
fi

source slurm/lib/cluster.sh  # NNODES, GPUS_PER_NODE, MAIN_ADDR, MAIN_PORT
export ACCEL_CONFIG NNODES GPUS_PER_NODE MAIN_ADDR MAIN_PORT
echo "smec-train: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}), $NNODES node(s) x $GPUS_PER_NODE GPUs," \
     "$ACCEL_CONFIG, main $MAIN_ADDR:$MAIN_PORT, $CONFIG $*"

requeue() {
  echo "smec-train: time limit near (USR1): requeueing job $SLURM_JOB_ID; it resumes from the newest checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
}
trap requeue USR1

# One launcher per node. The config and overrides travel as arguments (not spliced into the command
# string), so override values with spaces or quotes arrive intact.
srun --kill-on-bad-exit=1 bash -c 'exec accelerate launch --config_file "$ACCEL_CONFIG" \
  --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) \
  --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" \
  launch/train.py --config "$0" --resume auto "$@"' "$CONFIG" "$@" &
SRUN=$!
# bash runs a trap only between commands: wait (unlike a foreground srun) returns as soon as USR1 arrives.
status=0
wait "$SRUN" || status=$?
while kill -0 "$SRUN" 2>/dev/null; do   # woken by the signal: let the requeue stop the ranks
  wait "$SRUN" || status=$?
done
exit "$status"
