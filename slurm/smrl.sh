#!/bin/bash
# Adapter-mode SMEC on a cluster: encode the corpus sharded over every GPU of the allocation
# (each rank writes its own cache shards; a requeued or re-submitted job finishes only the
# missing shards), then train the SMRL stages and baselines on the cache and write the report.
#
#   sbatch slurm/smrl.sh configs/scifact-minilm.yaml [section.key=value ...]
#
# Usual options (override on the sbatch command line):
#SBATCH --job-name=smec-smrl
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one launcher per node; accelerate starts the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
set -euo pipefail
CONFIG=${1:-configs/scifact-minilm.yaml}
shift || true
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs

NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}   # "h100:8" -> 8
# under pipefail a failing scontrol must not add a second line: default separately
MAIN_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || true)
MAIN_ADDR=${MAIN_ADDR:-localhost}
MAIN_PORT=${MAIN_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} TOKENIZERS_PARALLELISM=false

# 1) encode, sharded over NNODES x GPUS_PER_NODE ranks (resumable)
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --num_machines $NNODES --num_processes $((NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_ADDR --main_process_port $MAIN_PORT \
  --multi_gpu launch/encode.py --config $CONFIG $*"

# 2) train the SMRL stages + baselines on the cache, evaluate, report (one process; seconds to minutes)
python launch/run.py --config "$CONFIG" "$@"
