"""One pipeline node as a submitit job: ``StageJob``, its executor parameters, SLURM submission.

Every job is a ``StageJob``: a ``submitit.helpers.Checkpointable`` that runs the stage API
(which resumes from its own latest checkpoint) and, on preemption or timeout, is requeued as
itself. Multi-GPU nodes run one task per GPU; in each task ``hpc_modatts.distributed.init_distributed``
takes the torch.distributed rendezvous from the job (``TorchDistributedEnvironment``), never
from variables the submitting process happened to have set.

``submit_slurm`` is the one SLURM submission loop: ``run_pipeline`` and the dry run
(``hpc_modatts.pipeline.dryrun``, a stand-in sbatch on PATH) both submit through it.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Callable

import submitit

from hpc_modatts.config import ExperimentConfig, check_one_line
from hpc_modatts.pipeline.dag import Node, node_config
from hpc_modatts.pipeline.record import Recorder

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the job
def resolve_callable(path: str) -> Callable[[ExperimentConfig], Any]:
    """``"package.module:function"`` -> the function."""
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


class StageJob(submitit.helpers.Checkpointable):
    """One pipeline node as a requeueable submitit job."""

    def __init__(self, node: Node, cfg: ExperimentConfig):
        self.node = node
        self.cfg = cfg

    def __call__(self) -> str:
        if self.node.done:  # requeued after it had finished, or re-run: nothing to do
            return str(self.node.run_dir)
        fn = resolve_callable(self.node.fn)
        return str(fn(node_config(self.cfg, self.node)))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preemption / timeout: requeue the same job; the stage resumes from its checkpoint."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ----------------------------------------------------------------------------- parameters
def node_parameters(
    node: Node, cfg: ExperimentConfig, preset: dict[str, Any] | None, dependency_ids: list[str]
) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for one node (generic + ``slurm_*``)."""
    r = node.resources
    params: dict[str, Any] = {
        "name": f"{cfg.name}:{node.name}",
        "timeout_min": cfg.pipeline.timeout_min,
        "nodes": r.nodes,
        "tasks_per_node": r.tasks_per_node,
        "cpus_per_task": r.cpus_per_task,
    }
    if r.gpus_per_node:  # --gpus-per-node=0 is refused by clusters without GPU GRES
        params["gpus_per_node"] = r.gpus_per_node
    if cfg.pipeline.mem_gb:
        params["mem_gb"] = cfg.pipeline.mem_gb
    preset = preset or {}
    for key in ("partition", "account", "qos", "constraint", "signal_delay_s", "setup"):
        if preset.get(key):
            params[f"slurm_{key}"] = preset[key]
    extra = {"requeue": True, "kill-on-invalid-dep": "yes", **(preset.get("additional") or {})}
    params["slurm_additional_parameters"] = extra
    if dependency_ids:
        params["slurm_dependency"] = "afterok:" + ":".join(dependency_ids)
    return check_sbatch_values(params)


def check_sbatch_values(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` unless a string in it (key or value, nested) holds a line break.

    Every such string lands in the generated sbatch script: a newline would end the ``#SBATCH``
    block there, drop the options after it and run the rest as shell commands.
    """

    def walk(key: str, value: Any) -> None:
        if isinstance(value, str):
            check_one_line(f"sbatch option {key}", value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}", str(k))
                walk(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)

    for k, v in params.items():
        walk(str(k), v)
    return params


def make_executor(folder: Path, executor: str, params: dict[str, Any]) -> submitit.AutoExecutor:
    check_one_line("submitit folder", str(folder))  # sbatch --output/--error paths
    check_sbatch_values(params)
    ex = submitit.AutoExecutor(folder=folder, cluster=executor)
    if executor != "slurm":  # local/debug ignore slurm_* anyway; keep their warnings quiet
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    ex.update_parameters(**params)
    return ex


# ----------------------------------------------------------------------------- SLURM
def submit_slurm(
    pending: list[Node],
    cfg: ExperimentConfig,
    preset: dict | None,
    folder: Path,
    rec: Recorder,
    in_flight: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Submit ``pending`` (topological order) with ``afterok`` on their parents' job ids; name -> job.

    Every pending node is submitted at once, each with ``--dependency=afterok:<ids of its
    pending parents>`` (or of ``in_flight`` jobs of an earlier submission), ``--requeue`` and
    ``--kill-on-invalid-dep=yes``; no driver process stays alive.
    """
    jobs: dict[str, Any] = {}
    earlier = in_flight or {}
    for node in pending:  # topological: parents already have ids
        dep_ids = [str(jobs[d].job_id) if d in jobs else earlier[d] for d in node.deps]  # deps are pending
        params = node_parameters(node, cfg, preset, dep_ids)
        job = make_executor(folder, "slurm", params).submit(StageJob(node, cfg))
        jobs[node.name] = job
        rec.add(node, job, folder, "slurm")
        log.info("submitted %s as job %s", node.name, job.job_id)
    return jobs
