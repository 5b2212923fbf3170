"""The stage graph (DAG) of one experiment, built from an ``ExperimentConfig``.

::

    convert (only when data.store is missing and pipeline.source_dir is set)
      -> translate -> synthesize                       (only for MoDATTS variants)
      -> segment-<variant>/fold_<k>                    (per variant, per fold)
      -> segment-<variant>/fold_<k>/round_<i>          (self-training, i = 1..k, MoDATTS variants)
      -> predict-<variant>                             (ensemble of the folds' final models)
      -> evaluate-<variant>                            (after evaluate-target-supervised if present)

The bounds (``source-supervised``, ``target-supervised``) need neither translation nor
synthesis and are not self-trained (thesis 5.5: they are the same network trained on source /
target masks only). Folders follow ``hpc_modatts.runs.stage_dir``. A node whose run folder holds
its DONE marker is *done*: it is not submitted and its dependents do not wait for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_modatts.config import MODATTS_VARIANTS, ExperimentConfig, apply_overrides, stage_config
from hpc_modatts.runs import DONE, is_done, stage_dir

SYNTH_MARKER = "DONE_synthesize"
"""Marker synthesis writes in the translate folder (see ``hpc_modatts.runs``)."""

STAGE_FN = {
    "convert": "hpc_modatts.pipeline.submit:convert_stage",
    "translate": "hpc_modatts.train.translate:run",
    "synthesize": "hpc_modatts.train.synthesize:run",
    "segment": "hpc_modatts.train.segment:run",
    "self-train": "hpc_modatts.train.self_training:run",
    "predict": "hpc_modatts.infer.predict:run",
    "evaluate": "hpc_modatts.infer.evaluate_node:run",
}
"""Callable ("module:function", each ``run(cfg) -> Path``) of every stage."""


@dataclass(frozen=True)
class Resources:
    """What one job of a node asks for."""

    nodes: int = 1
    tasks_per_node: int = 1
    """One task per GPU for training nodes (each task is one DeepSpeed rank)."""
    gpus_per_node: int = 0
    cpus_per_task: int = 1


@dataclass(frozen=True)
class Node:
    """One job of the pipeline."""

    name: str
    """Unique name, e.g. ``segment/self-supervised/fold_0/round_1``."""
    fn: str
    """Callable as ``module:function``; called with the node's config."""
    overrides: dict[str, Any]
    """Dotted config overrides applied to the experiment config for this node."""
    run_dir: Path
    """Folder where the node writes its outputs and DONE marker."""
    deps: tuple[str, ...] = ()
    """Names of the nodes that must finish first."""
    resources: Resources = field(default_factory=Resources)
    marker: str = DONE
    """Completion marker file name inside ``run_dir``."""

    @property
    def done(self) -> bool:
        return is_done(self.run_dir, self.marker)


class Dag:
    """Nodes by name, with a topological order and the pending (not done) subset."""

    def __init__(self, nodes: list[Node]):
        self.nodes: dict[str, Node] = {}
        for n in nodes:
            if n.name in self.nodes:
                raise ValueError(f"duplicate node {n.name}")
            self.nodes[n.name] = n
        for n in nodes:
            for d in n.deps:
                if d not in self.nodes:
                    raise ValueError(f"node {n.name} depends on unknown node {d}")

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def topological(self) -> list[Node]:
        """Nodes with every dependency before its dependents (stable: insertion order)."""
        order: list[Node] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = placed

        def visit(name: str) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ValueError(f"dependency cycle through {name}")
            state[name] = 1
            for d in self.nodes[name].deps:
                visit(d)
            state[name] = 2
            order.append(self.nodes[name])

        for name in self.nodes:
            visit(name)
        return order

    def pending(self) -> list[Node]:
        """Not-done nodes in topological order, each with its deps reduced to pending ones."""
        out = []
        pending_names = {n.name for n in self.nodes.values() if not n.done}
        for n in self.topological():
            if n.name in pending_names:
                out.append(dataclasses.replace(n, deps=tuple(d for d in n.deps if d in pending_names)))
        return out


# ----------------------------------------------------------------------------- building
def _training_resources(cfg: ExperimentConfig) -> Resources:
    p = cfg.pipeline
    tasks = p.gpus_per_node or p.tasks_per_node  # one rank per GPU; CPU ranks as configured
    return Resources(nodes=p.nodes, tasks_per_node=tasks, gpus_per_node=p.gpus_per_node, cpus_per_task=p.cpus_per_task)


def _single_task(cfg: ExperimentConfig, gpu: bool = False) -> Resources:
    p = cfg.pipeline
    return Resources(gpus_per_node=1 if gpu and p.gpus_per_node else 0, cpus_per_task=p.cpus_per_task)


def needs_convert(cfg: ExperimentConfig) -> bool:
    return bool(cfg.pipeline.source_dir) and not Path(cfg.data.store).exists()


def build_dag(cfg: ExperimentConfig) -> Dag:
    """The full stage graph of ``cfg`` (done nodes included; see ``Dag.pending``)."""
    root = cfg.run_dir
    train_res = _training_resources(cfg)
    nodes: list[Node] = []
    data_deps: tuple[str, ...] = ()
    if needs_convert(cfg):
        nodes.append(Node("convert", STAGE_FN["convert"], {}, stage_dir(root, "convert"), resources=_single_task(cfg)))
        data_deps = ("convert",)

    variants = list(dict.fromkeys(cfg.pipeline.variants))
    translator_run = cfg.train.translator_run
    synth_deps: tuple[str, ...] = data_deps
    if any(v in MODATTS_VARIANTS for v in variants):
        if not translator_run:  # train our own translator; a given one is used as is
            translator_run = str(stage_dir(root, "translate"))
            nodes.append(
                Node(
                    "translate",
                    STAGE_FN["translate"],
                    {"train.stage": "translate"},
                    Path(translator_run),
                    data_deps,
                    train_res,
                )
            )
            synth_deps = ("translate",)
        synth_store = cfg.train.pseudo_target_store or str(Path(translator_run) / "synth.zarr")
        nodes.append(
            Node(
                "synthesize",
                STAGE_FN["synthesize"],
                {
                    "train.stage": "synthesize",
                    "train.translator_run": translator_run,
                    "train.pseudo_target_store": synth_store,
                },
                Path(translator_run),
                synth_deps,
                train_res,
                marker=SYNTH_MARKER,
            )
        )

    evaluate_after: tuple[str, ...] = ()
    if "target-supervised" in variants:  # evaluated first: the others report % of it
        variants.remove("target-supervised")
        variants.insert(0, "target-supervised")
        evaluate_after = ("evaluate/target-supervised",)
    for v in variants:
        nodes += _variant_nodes(
            cfg, v, translator_run, data_deps, train_res, evaluate_after if v != "target-supervised" else ()
        )
    return Dag(nodes)


def _variant_nodes(
    cfg: ExperimentConfig,
    v: str,
    translator_run: str,
    data_deps: tuple[str, ...],
    train_res: Resources,
    evaluate_after: tuple[str, ...],
) -> list[Node]:
    root = cfg.run_dir
    nodes: list[Node] = []
    base = {"train.variant": v}
    if v in MODATTS_VARIANTS:
        base["train.translator_run"] = translator_run
        base["train.pseudo_target_store"] = cfg.train.pseudo_target_store or str(Path(translator_run) / "synth.zarr")
        seg_deps: tuple[str, ...] = ("synthesize",)
        rounds = cfg.pipeline.self_training_rounds
    else:
        seg_deps = data_deps
        rounds = 0
    finals = []
    for k in range(cfg.pipeline.folds):
        fold_name = name = f"segment/{v}/fold_{k}"
        prev_dir = stage_dir(root, "segment", v, k)
        nodes.append(
            Node(
                name,
                STAGE_FN["segment"],
                {**base, "train.stage": "segment", "data.fold": k},
                prev_dir,
                seg_deps,
                train_res,
            )
        )
        for i in range(1, rounds + 1):
            rdir = stage_dir(root, "self-train", v, k, i)
            rname = f"{fold_name}/round_{i}"
            # thesis 5.4.3: round i fine-tunes the best model of round i-1 on the pseudo-labels
            # that model predicts (the stage chooses where it writes them)
            nodes.append(
                Node(
                    rname,
                    STAGE_FN["self-train"],
                    {
                        **base,
                        "train.stage": "self-train",
                        "data.fold": k,
                        "train.rounds": rounds,
                        "train.round": i,
                        "train.init_from": str(prev_dir),
                    },
                    rdir,
                    (name,),
                    train_res,
                )
            )
            name, prev_dir = rname, rdir
        finals.append(name)
    nodes.append(
        Node(
            f"predict/{v}",
            STAGE_FN["predict"],
            dict(base),
            stage_dir(root, "predict", v),
            tuple(finals),
            _single_task(cfg, gpu=True),
        )
    )
    nodes.append(
        Node(
            f"evaluate/{v}",
            STAGE_FN["evaluate"],
            dict(base),
            stage_dir(root, "evaluate", v),
            (f"predict/{v}", *evaluate_after),
            _single_task(cfg, gpu=True),
        )
    )  # translates pseudo-targets
    return nodes


def node_config(cfg: ExperimentConfig, node: Node) -> ExperimentConfig:
    """The experiment config with the node's overrides applied (checked again)."""
    stage = node.overrides.get("train.stage")
    if stage:  # as the `train` CLI does: the stage's and the variant's override blocks first, then ours
        cfg = stage_config(cfg, stage, node.overrides.get("train.variant"))
    items = []
    for k, v in node.overrides.items():
        items.append(f"{k}={_yaml_scalar(v)}")
    return apply_overrides(cfg, items)


def _yaml_scalar(v: Any) -> str:
    import json

    # JSON is valid YAML: quoting keeps paths such as "runs/x: y" or "" intact
    return json.dumps(v)
