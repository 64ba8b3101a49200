"""Downstream tasks: which manifest column a task reads and what its classes are.

A task is a label column of the manifest (see :mod:`mammoclip.data.manifest`). Binary findings are
nullable 0/1 columns; density (A-D) and BI-RADS (0-6) are multi-class. Tasks live in a registry so
that the CLI, zero-shot, the probe and fine-tuning agree on one mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mammoclip.constants import BINARY_LABELS, BIRADS_CATEGORIES, DENSITIES
from mammoclip.errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskSpec:
    """One classification task on the manifest."""

    #: Task name (the CLI's ``--task``).
    name: str
    #: Manifest column holding the label.
    column: str
    #: Class values in label-index order (index 1 is the positive class of a binary task).
    classes: tuple[object, ...]
    #: Task name understood by :func:`mammoclip.text.prompts.zero_shot_prompts`.
    prompt_task: str

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def class_names(self) -> list[str]:
        """Readable class names (binary: ``no_<task>``, ``<task>``), used in column names."""
        if self.binary:
            return [f"no_{self.name}", self.name]
        return [str(c) for c in self.classes]


_TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def register_task(spec: TaskSpec, *aliases: str) -> TaskSpec:
    """Add a task (and alternative names for it) to the registry."""
    _TASKS[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name
    return spec


for _label in BINARY_LABELS:
    register_task(TaskSpec(_label, _label, (0, 1), "malignancy" if _label == "malignant" else _label))
_ALIASES.update({"malignancy": "malignant", "cancer": "malignant", "calc": "calcification"})
register_task(TaskSpec("density", "density", DENSITIES, "density"))
register_task(TaskSpec("birads", "birads", BIRADS_CATEGORIES, "birads"))


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (aliases such as ``malignancy`` accepted).

    Raises:
        ConfigError: for an unknown task, listing the known ones.
    """
    key = _ALIASES.get(name, name)
    if key not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {list_tasks()} (aliases: {sorted(_ALIASES)})")
    return _TASKS[key]


def task_labels(images: pd.DataFrame, task: TaskSpec, *, source: str = "manifest") -> np.ndarray:
    """Label indices of every row: ``(N,)`` int, -1 where the label is missing.

    Raises:
        DataError: when the manifest has no column for the task, or no labelled row at all.
    """
    if task.column not in images.columns:
        raise DataError(
            f"{source}: no column {task.column!r} for task {task.name!r}; add the labels to the manifest "
            "(see docs/evaluation.md) or choose a task whose column it has"
        )
    lookup = {str(c): i for i, c in enumerate(task.classes)}
    values = images[task.column]
    out = np.full(len(values), -1, dtype=int)
    for i, v in enumerate(values):
        if pd.isna(v):
            continue
        key = str(int(v)) if isinstance(v, (int, np.integer, float, np.floating)) else str(v)
        if key not in lookup:
            raise DataError(f"{source}: row {i}, column {task.column!r}: value {v!r} not in {list(lookup)}")
        out[i] = lookup[key]
    if (out < 0).all():
        raise DataError(f"{source}: column {task.column!r} has no labels; task {task.name!r} needs labelled rows")
    return out
