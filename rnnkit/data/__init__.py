"""Data: synthetic long-dependency tasks (more loaders arrive with the tasks)."""

from rnnkit.data.synthetic import AddingTask, CopyTask

__all__ = ["AddingTask", "CopyTask"]
