#!/bin/bash
# SMEC on a cluster: the LLM backbone (LoRA / full / QLoRA) trains with the SMEC head, one SMRL stage
# (D -> D/2 -> D/4 ...) after the other, under accelerate launch (DeepSpeed ZeRO or DDP) on every GPU of
# the allocation; then the final model is evaluated, sharded the same way, at every dim.
#
#   mkdir -p logs                      # once: Slurm opens logs/ before this script runs
#   sbatch slurm/smrl.sh configs/qwen2-7b-lora-zero3.yaml [section.key=value ...]
#   sbatch --nodes 2 slurm/smrl.sh configs/llama3-8b-lora-zero3.yaml          # 2 x 8 GPUs (global batch x 2)
#   ACCEL_CONFIG=configs/accelerate/1node-8gpu-zero2.yaml sbatch slurm/smrl.sh CONFIG e2e.deepspeed=ds_configs/zero2.json
#
# Launch: one launcher per node (srun), accelerate launch with --num_machines $SLURM_NNODES, --num_processes
# nodes x GPUs per node, --machine_rank $SLURM_NODEID, the first node of $SLURM_JOB_NODELIST as main address
# and a port derived from the job id (slurm/lib/cluster.sh). The accelerate config follows the smec config's
# e2e.deepspeed (empty: 1node-8gpu-ddp.yaml; zero2.json, zero3.json, zero3_offload.json: the matching
# configs/accelerate/1node-8gpu-*.yaml) unless ACCEL_CONFIG names one.
#
# Resumable phases: every SMRL stage ends with a complete checkpoint and a stage export
# (run.output_dir/stages/stageN), plus a checkpoint every e2e.checkpoint_every steps. The script always
# passes --resume auto, so a rerun continues from the newest complete checkpoint and never redoes a
# finished stage. Before the time limit Slurm sends USR1 to this shell (--signal=B:USR1@SECONDS: make
# SECONDS longer than one step plus one checkpoint write); the trap writes run.output_dir/STOP, every rank
# stops after its current step, one checkpoint is written, the ranks exit, and the job requeues itself
# (scontrol requeue: same job id, log appended with --open-mode=append). A USR1 during the evaluation
# requeues at once: the evaluation keeps its finished embedding shards. A job killed without warning
# (node failure, preemption with --requeue) resumes from the last complete checkpoint the same way.
# Resubmitting the same config by hand also resumes; start over with a fresh run.output_dir=... .
#
# The hub model is downloaded by every node on first use: fetch it once beforehand (hf download
# Qwen/Qwen2-7B) into a shared HF_HOME, then HF_HUB_OFFLINE=1 sbatch ... keeps the ranks off the network.
#
# Usual options (override on the sbatch command line):
#SBATCH --job-name=smec-smrl
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one launcher per node; accelerate starts the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm/smrl.sh CONFIG.yaml [section.key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
source slurm/lib/cluster.sh  # NNODES, GPUS_PER_NODE, MAIN_ADDR, MAIN_PORT, smec_setting, on_nodes, requeue_job

# Check the config (and every override) before any node starts; read what this script needs from it.
OUT=$(smec_setting "$CONFIG" run.output_dir "$@")
DS=$(smec_setting "$CONFIG" e2e.deepspeed "$@")
STAGES=$(smec_setting "$CONFIG" run.dims "$@" | wc -w)
ACCEL_CONFIG=$(accel_config_for "$DS")
export ACCEL_CONFIG
STOP="$OUT/STOP"
echo "smec-smrl: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}), $NNODES node(s) x $GPUS_PER_NODE" \
     "processes, $ACCEL_CONFIG, main $MAIN_ADDR:$MAIN_PORT, $STAGES stages into $OUT, $CONFIG $*"

PHASE=train
on_usr1() {
  if [[ $PHASE == train ]]; then
    echo "smec-smrl: time limit near (USR1): the ranks checkpoint after this step, then the job requeues"
    mkdir -p "$OUT" && touch "$STOP"
  else
    requeue_job
  fi
}
trap on_usr1 USR1

# 1) the SMRL stages (resumable; stops with a checkpoint when $STOP appears)
rm -f "$STOP"
on_nodes launch/train.py --config "$CONFIG" --resume auto "$@"
if [[ -e "$STOP" ]]; then
  requeue_job
  exit 0
fi

# 2) the final model (every stage's dims) evaluated on data.eval_split, sharded over the same ranks
PHASE=eval
on_nodes launch/eval.py --config "$CONFIG" --stage "$OUT/stages/stage$STAGES" "$@"
echo "smec-smrl: done: $OUT/stages/stage$STAGES/eval/eval.md"
