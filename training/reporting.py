"""The stage contract's outputs: metrics.jsonl, the resolved config and summary.json beside the model.

Metric names are ``phase/name`` (``train/loss``, ``eval/accuracy``). Only the main process reports.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import StageConfig

OnLog = Callable[[int, int, dict[str, float]], None]
ShouldStop = Callable[[], bool]

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "stage_config.json"   # not config.json: that name belongs to the saved model
SUMMARY_FILE = "summary.json"


def no_log(step: int, total: int, metrics: dict[str, float]) -> None:
    pass


def never_stop() -> bool:
    return False


@dataclass
class StageResult:
    """What a stage hands back. ``status`` is "completed" or "stopped" (should_stop said so; a
    resumable checkpoint was written). ``model`` is the trained model in memory (not serialised)."""

    stage: str
    status: str
    out: Path
    steps: int
    summary: dict[str, Any]
    model: Any = field(default=None, repr=False)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


class Reporter:
    """Fans metrics out to metrics.jsonl and the caller's on_log; silent on non-main processes."""

    def __init__(self, out: Path, stage: str, config: StageConfig, on_log: OnLog, *, main: bool = True,
                 append: bool = False):
        self.out, self.stage, self.on_log, self.main = out, stage, on_log, main
        self.started = time.time()
        if main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / CONFIG_FILE, {"stage": stage, "config": config.to_dict()})
            self._file = open(out / METRICS_FILE, "a" if append else "w", encoding="utf-8")

    def log(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if not self.main:
            return
        row = {"step": step, "time": round(time.time() - self.started, 3)}
        row.update({name: _clean(float(value)) for name, value in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.on_log(step, total, metrics)

    def finish(self, status: str, steps: int, summary: dict[str, Any], model: Any = None) -> StageResult:
        summary = {"stage": self.stage, "status": status, "steps": steps,
                   "seconds": round(time.time() - self.started, 2), **summary}
        if self.main:
            self._file.close()
            write_json(self.out / SUMMARY_FILE, {k: _clean(v) for k, v in summary.items()})
        return StageResult(self.stage, status, self.out, steps, summary, model)
