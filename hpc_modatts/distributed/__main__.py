"""``python -m hpc_modatts.distributed``: initialise a one-process group the way every training job
does (``init_distributed``: DeepSpeed's communication backend) and exit.

Why: on its first initialisation on a machine DeepSpeed JIT-compiles the C++ op of that backend
(``shm_comm`` on CPU, ~36 s on 2 cores) into ``$TORCH_EXTENSIONS_DIR``; later processes load it in
well under a second. ``make install`` runs this once so that the first training job of ``make
demo`` / ``make test`` does not pay the compile on its critical path (and jobs started side by side
do not wait on the compile's file lock). On a cluster, run it once per software environment
(login node) with the job's ``TORCH_EXTENSIONS_DIR``.
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist

from hpc_modatts.distributed.env import init_distributed


def main() -> None:
    start = time.perf_counter()
    env = init_distributed()
    dist.destroy_process_group()
    cache = os.environ.get("TORCH_EXTENSIONS_DIR", "torch's default extensions folder")
    seconds = time.perf_counter() - start
    print(f"DeepSpeed {env.backend} backend ready on {env.device} in {seconds:.1f} s (ops cached in {cache})")


if __name__ == "__main__":
    main()
