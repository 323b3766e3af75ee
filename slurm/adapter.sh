#!/bin/bash
# Adapter-mode SMEC on a cluster: encode the corpus sharded over every GPU of the allocation
# (each rank writes its own cache shards; a requeued or re-submitted job finishes only the
# missing shards), then train the SMRL stages and baselines on the cache and write the report.
# (End-to-end training of the backbone with the SMEC head: slurm/smrl.sh.)
#
#   sbatch slurm/adapter.sh configs/scifact-minilm.yaml [section.key=value ...]
#
# Usual options (override on the sbatch command line):
#SBATCH --job-name=smec-adapter
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one launcher per node; accelerate starts the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
set -euo pipefail
CONFIG=${1:-configs/scifact-minilm.yaml}
shift || true
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
source slurm/lib/cluster.sh  # NNODES, GPUS_PER_NODE, MAIN_ADDR, MAIN_PORT, on_nodes, requeue_job
export ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/1node-8gpu-ddp.yaml}
trap requeue_job USR1  # the cache keeps its finished shards: the rerun encodes only the rest

# 1) encode, sharded over NNODES x GPUS_PER_NODE ranks (resumable)
on_nodes launch/encode.py --config "$CONFIG" "$@"

# 2) train the SMRL stages + baselines on the cache, evaluate, report (one process; seconds to minutes)
python launch/run.py --config "$CONFIG" "$@"
