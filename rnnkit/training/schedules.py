r"""Learning-rate schedules for every task's ``fit(lr_schedule=...)`` (Lightning steps them, and saves their state in
checkpoints, so ``resume=True`` continues a schedule where it stopped).

With :math:`\eta_0` the task's ``learning_rate``, :math:`k` the optimizer steps taken so far and :math:`N` the steps
the whole fit takes (every epoch's batches; with truncated BPTT, every batch's, however many chunks it has):

- ``"constant"`` (the default): :math:`\eta_0` throughout.
- ``"cosine"``: :math:`\eta_k = \eta_0 \, (1 + \cos(\pi k / N)) / 2`, from :math:`\eta_0` at the first step
  down towards 0 at the last, updated every step (Loshchilov & Hutter 2017, without restarts).
- ``"plateau"``: halve the learning rate once :data:`PLATEAU_PATIENCE` + 1 epochs in a row (3) have not lowered
  the monitored loss (``val_loss`` with validation data, else ``train_loss``) below the best so far by more than
  a relative :data:`PLATEAU_THRESHOLD`; the count then starts again (torch's ``ReduceLROnPlateau`` with
  ``patience=2, factor=0.5``; Keras has the same rule as a callback). rnnkit steps it at the end of each
  epoch, before the epoch's checkpoint is saved, so that a resumed fit halves when an uninterrupted one would.
- a function ``(optimizer, total_steps) -> scheduler``: any ``torch.optim.lr_scheduler`` (stepped once an
  epoch), or a Lightning ``lr_scheduler`` dict (``{"scheduler": ..., "interval": "step"}``, a ``"monitor"`` for a
  plateau scheduler). With ``strategy="ddp_spawn"`` it travels to the processes pickled: a module-level
  function, not a lambda.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch

from rnnkit._checks import check_choice

SCHEDULES = ("constant", "cosine", "plateau")

#: ``"plateau"``: epochs without improvement that are let pass; the next one multiplies the rate by PLATEAU_FACTOR
PLATEAU_PATIENCE = 2
PLATEAU_FACTOR = 0.5
#: ``"plateau"``: an epoch improves on the best loss ``b`` only if its loss is below ``b * (1 - PLATEAU_THRESHOLD)``
PLATEAU_THRESHOLD = 1e-4

Schedule = Union[str, Callable]


def check_schedule(lr_schedule: Schedule | None) -> Schedule:
    """``lr_schedule`` as :func:`scheduler_config` takes it (None means ``"constant"``), or a ValueError naming
    the argument, the value and the choices."""
    if lr_schedule is None:
        return "constant"
    if callable(lr_schedule):
        return lr_schedule
    if not isinstance(lr_schedule, str):
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)} or a function (optimizer, total_steps) "
                         f"-> scheduler, got {lr_schedule!r}")
    return check_choice("lr_schedule", lr_schedule, SCHEDULES)


def cosine_factor(step: int, total_steps: int) -> float:
    """The ``"cosine"`` schedule's learning rate at optimizer step ``step`` (0-based) of ``total_steps``, as a
    fraction of the initial one."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def scheduler_config(optimizer: torch.optim.Optimizer, lr_schedule: Schedule, total_steps: int,
                     monitor: str) -> dict | None:
    """The Lightning ``lr_scheduler`` configuration of ``lr_schedule`` for ``optimizer`` over a fit of
    ``total_steps`` optimizer steps, a plateau schedule watching the logged value ``monitor``; None for
    ``"constant"``."""
    if callable(lr_schedule):
        made = lr_schedule(optimizer, total_steps)
        if isinstance(made, dict):
            if "scheduler" not in made:
                raise ValueError(f"lr_schedule returned a dict without a 'scheduler' entry: {sorted(made)}")
            return made
        if not hasattr(made, "step") or not hasattr(made, "state_dict"):
            raise ValueError(f"lr_schedule must return a torch.optim.lr_scheduler scheduler or a Lightning "
                             f"lr_scheduler dict, got {type(made).__name__}")
        config = {"scheduler": made, "interval": "epoch"}
        if isinstance(made, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = monitor
        return config
    if lr_schedule == "constant":
        return None
    if lr_schedule == "cosine":
        steps = max(int(total_steps), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, steps))
        return {"scheduler": scheduler, "interval": "step", "name": "lr"}
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=PLATEAU_FACTOR,
                                                           patience=PLATEAU_PATIENCE, threshold=PLATEAU_THRESHOLD,
                                                           threshold_mode="rel")
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor, "name": "lr"}
