#!/usr/bin/env bash
# One multi-GPU node with torchrun (one rank per GPU; CPU works too, with gloo).
#   launchers/torchrun_one_node.sh NUM_GPUS STAGE CONFIG [key=value ...]
#   e.g. launchers/torchrun_one_node.sh 4 segment brats_t1_t2 distributed.zero_stage=3
set -euo pipefail
NUM_GPUS=${1:?usage: $0 NUM_GPUS STAGE CONFIG [key=value ...]}
shift
exec torchrun --standalone --nproc_per_node "$NUM_GPUS" -m hpc_modatts train "$@"
