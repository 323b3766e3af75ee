#!/bin/bash
# Sharded evaluation on a cluster: the corpus and queries encoded over every GPU of the allocation (each
# rank writes its shards of an embedding cache beside the results), then FAISS search (a GPU index when
# faiss-gpu is installed) per method and dim on rank 0; optionally MTEB tasks on the same model.
#
#   sbatch slurm/eval.sh CONFIG.yaml --stage runs/x/stages/stage4 [smec eval options] [section.key=value ...]
#   sbatch slurm/eval.sh configs/scifact-minilm.yaml --head runs/scifact-minilm/models/supervised/smec.safetensors
#   sbatch slurm/eval.sh CONFIG.yaml --stage DIR --mteb scifact --mteb-dim 448
#
# A time limit, preemption or node failure loses at most the shards being written: USR1 before the limit
# requeues the job and the rerun encodes only the missing shards (--output must stay the same).
# Launch geometry as in slurm/smrl.sh (slurm/lib/cluster.sh); ACCEL_CONFIG picks the accelerate config
# (default configs/accelerate/1node-8gpu-ddp.yaml: evaluation needs no DeepSpeed).
#
# Usual options (override on the sbatch command line):
#SBATCH --job-name=smec-eval
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
CONFIG=${1:?usage: sbatch slurm/eval.sh CONFIG.yaml [--stage DIR | --head H ...] [smec eval options] [k=v ...]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
source slurm/lib/cluster.sh  # NNODES, GPUS_PER_NODE, MAIN_ADDR, MAIN_PORT, on_nodes, requeue_job
export ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/1node-8gpu-ddp.yaml}
echo "smec-eval: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}), $NNODES node(s) x $GPUS_PER_NODE" \
     "processes, $ACCEL_CONFIG, $CONFIG $*"
trap requeue_job USR1
on_nodes launch/eval.py --config "$CONFIG" "$@"
