"""The experiment pipeline: the stage DAG (``dag``), its submission (``submit``), ``status``.

``run(cfg)`` is the stage-style entry point (``hpc_modatts.pipeline.run``): submit the whole
DAG of ``cfg`` with ``cfg.pipeline.executor`` and return the ``pipeline.json`` path.

This file runs on every import of a submodule (``status``, ``dag``, ``dryrun``), so it imports
``submit``, and with it the data stack (zarr, nibabel, scipy, dask), only when ``run`` or
``run_pipeline`` is called: ``hpc-modatts status`` stays light.
"""

from __future__ import annotations

from pathlib import Path

from hpc_modatts.config import ExperimentConfig


def run(cfg: ExperimentConfig) -> Path:
    """Submit (slurm) or run (local/debug) every pending node of ``cfg``'s DAG."""
    from hpc_modatts.pipeline.submit import run_pipeline  # see the module docstring

    return run_pipeline(cfg)


def run_pipeline(cfg: ExperimentConfig, executor: str | None = None, cluster: str | None = None, **kw) -> Path:
    """See ``hpc_modatts.pipeline.submit.run_pipeline``."""
    from hpc_modatts.pipeline.submit import run_pipeline as _run  # see the module docstring

    return _run(cfg, executor=executor, cluster=cluster, **kw)
