# Sourced by the sbatch scripts (after they cd to the repo): the launch geometry from SLURM's
# environment, with single-machine defaults, and the one way they start work on every node.
NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}   # "h100:8" -> 8
# (|| true, not || echo: under pipefail head closing the pipe early would append a second host name)
MAIN_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || true)
MAIN_ADDR=${MAIN_ADDR:-localhost}
MAIN_PORT=${MAIN_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} TOKENIZERS_PARALLELISM=false
export NNODES GPUS_PER_NODE MAIN_ADDR MAIN_PORT

# smec_setting CONFIG KEY [overrides...]: one resolved config value, a list space-separated (the config and every override
# are checked here, before any node starts; a bad key exits with smec's one-line error).
smec_setting() {
  python - "$@" <<'PY'
import sys
from smec_dist.config import load_config
from smec_dist.errors import SmecError
try:
    value = load_config(sys.argv[1], sys.argv[3:]).to_dict()
    for part in sys.argv[2].split("."):
        value = value[part]
except SmecError as exc:
    sys.exit(f"smec: error: {exc}")
print(" ".join(map(str, value)) if isinstance(value, list) else value)
PY
}

# accel_config_for DEEPSPEED_JSON: the configs/accelerate file matching e2e.deepspeed (ACCEL_CONFIG wins).
accel_config_for() {
  local default=""
  case "$(basename "${1:-}")" in
    "") default=configs/accelerate/1node-8gpu-ddp.yaml ;;
    zero2.json) default=configs/accelerate/1node-8gpu-zero2.yaml ;;
    zero3.json) default=configs/accelerate/1node-8gpu-zero3.yaml ;;
    zero3_offload.json) default=configs/accelerate/1node-8gpu-zero3-offload.yaml ;;
  esac
  local chosen=${ACCEL_CONFIG:-$default}
  if [[ -z "$chosen" || ! -f "$chosen" ]]; then
    echo "slurm: no accelerate config for e2e.deepspeed=${1:-}; set ACCEL_CONFIG=configs/accelerate/..." >&2
    return 2
  fi
  echo "$chosen"
}

# on_nodes SCRIPT ARGS...: `accelerate launch SCRIPT ARGS` on every node of the allocation (one
# launcher per node through srun, NNODES x GPUS_PER_NODE ranks), with $ACCEL_CONFIG. Arguments
# travel as arguments (not spliced into a command string), so values with spaces arrive intact.
# srun runs in the background and is waited for, because bash runs a trap (USR1 before the time
# limit) only between commands: `wait` returns as soon as the signal arrives; we then wait again.
on_nodes() {
  srun --kill-on-bad-exit=1 bash -c 'exec accelerate launch --config_file "$ACCEL_CONFIG" \
    --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" "$@"' \
    on_nodes "$@" &
  local pid=$! status=0
  wait "$pid" || status=$?
  while kill -0 "$pid" 2>/dev/null; do  # woken by a trap: the step is still running
    status=0
    wait "$pid" || status=$?
  done
  return "$status"
}

# requeue_job: put this job back in the queue under the same id (Slurm stops what still runs);
# the rerun resumes from the newest complete checkpoint.
requeue_job() {
  echo "slurm: requeueing job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0})"
  scontrol requeue "${SLURM_JOB_ID:?not inside a Slurm job}"
}
