#!/usr/bin/env bash
# One multi-GPU node with the DeepSpeed launcher (one rank per GPU; CPU works too, with gloo).
#   launchers/deepspeed_one_node.sh NUM_GPUS STAGE CONFIG [key=value ...]
#   e.g. launchers/deepspeed_one_node.sh 4 segment brats_t1_t2 distributed.zero_stage=2
# The launcher appends --local_rank=N (accepted by the CLI) and sets RANK/WORLD_SIZE/MASTER_*;
# hpc_modatts.distributed.init_distributed picks them up.
set -euo pipefail
NUM_GPUS=${1:?usage: $0 NUM_GPUS STAGE CONFIG [key=value ...]}
shift
# deepspeed does not set OMP_NUM_THREADS: cores / ranks
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NUM_GPUS > 0 ? $(nproc) / NUM_GPUS : 1 ))}
exec deepspeed --num_gpus "$NUM_GPUS" --module hpc_modatts train "$@"
