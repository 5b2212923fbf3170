"""``metrics.jsonl`` of a run (one JSON line per logged step and per validation), mirrored to
TensorBoard when it is installed. Only rank 0 writes; on resume the file is cut back to the
resumed step so every step is logged once."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hpc_modatts.runs import atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """``write`` appends a record (with the time); ``truncate`` drops lines after a step."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main = is_main
        self._writer: Any = None

    def open_tensorboard(self) -> None:
        if not self.is_main:
            return
        try:  # tensorboard is optional; metrics.jsonl is always written
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(str(self.path.parent / "tensorboard"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def write(self, record: dict, step: int) -> None:
        """Append ``record`` with the time (rank 0 only); its numbers also go to TensorBoard."""
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in record.items():
                if k not in ("time", "step", "epoch") and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, record.get("step", step))

    def truncate(self, step: int) -> None:
        """Drop metric lines a killed run wrote after the checkpoint we resume from (and lines
        a kill left half-written), so every step is logged once."""
        if not self.path.is_file():
            return
        keep, dropped = [], 0
        for ln in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(ln)
                line_step = record.get("step", 0) if isinstance(record, dict) else None
            except ValueError:
                line_step = None
            if isinstance(line_step, int) and line_step <= step:
                keep.append(ln)
            elif ln.strip():
                dropped += 1
        if dropped:
            log.info("%s: dropped %d line(s) after step %d or unreadable", self.path, dropped, step)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
