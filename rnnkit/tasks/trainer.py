"""The Lightning Trainer set-up every task shares."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rnnkit._checks import check_choice, torch_build
from rnnkit.training.modules import EpochMeans
from rnnkit.training.schedules import check_schedule

LAST_CHECKPOINT = "last.ckpt"


@contextlib.contextmanager
def quiet_lightning():
    """Hide Lightning's informational chatter (accelerator lines, tips) and two known-harmless warnings:
    a validation_step with no validation data (asked for), and an upstream pytree deprecation."""
    logger = logging.getLogger("lightning.pytorch")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _keep_sigint_handler():
    """Lightning ignores SIGINT while it shuts down after Ctrl-C and never restores it: restore it."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


class ReleaseProcessGroup(pl.Callback):
    """Destroy the data-parallel process group once training is over (Lightning leaves it alive).

    A worker that exits with a live gloo group can abort in the group's destructor ("terminate called
    without an active exception", SIGABRT): seen here twice in nine full test runs. ``on_fit_end``
    comes after Lightning's own teardown, so no collective runs after it; the barrier lets every rank
    finish before the group goes."""

    def on_fit_end(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def fit_module(module: pl.LightningModule, train: DataLoader, validation: DataLoader | None, epochs: int,
               gradient_clip: float | None = 1.0, patience: int | None = None, progress: bool = True,
               log_dir: str | os.PathLike | None = None, devices: int = 1, strategy: str = "auto",
               checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
               callbacks: list | None = None, accelerator: str = "cpu",
               lr_schedule: str | Callable | None = "constant") -> pl.Trainer:
    """Train ``module`` with Lightning, on the CPU unless ``accelerator`` says otherwise.

    - ``gradient_clip``: clip the gradient norm to this (None: no clipping);
    - ``patience``: with validation data, stop after this many epochs without a better ``val_loss``;
    - ``progress``: a rich progress bar; ``log_dir``: CSV + TensorBoard logs there;
    - ``devices=2, strategy="ddp_spawn"`` (or ``"ddp"`` from a script): data-parallel processes talking over
      gloo; the trained weights come back to ``module``. Spawned processes receive tensors through files
      (torch's ``file_system`` sharing strategy): the default, file descriptors, fails on some machines
      (this project's sandbox among them) with "unable to resize file";
    - ``checkpoint_dir``: Lightning's ``last.ckpt`` there after every epoch; ``resume=True`` continues from it.
      Ctrl-C stops training with a KeyboardInterrupt that says where the last complete epoch is saved;
    - ``callbacks``: more Lightning callbacks, e.g. :class:`rnnkit.training.callbacks.GradientNormMonitor`;
    - ``accelerator``: ``"cpu"`` (default), ``"gpu"`` (one CUDA GPU: an error if there is none) or ``"auto"``
      (a GPU when there is one). The module comes back on the CPU after training either way, where the tasks
      predict, evaluate and save;
    - ``lr_schedule``: ``"constant"`` (default), ``"cosine"`` (decay to 0 over the fit's steps), ``"plateau"``
      (halve at the third epoch in a row without a lower ``val_loss``, or ``train_loss`` without validation data), or a
      function ``(optimizer, total_steps) -> scheduler``: see :mod:`rnnkit.training.schedules`. With
      ``log_dir``, the learning rate is logged as ``lr``.
    """
    accelerator = _check_accelerator(accelerator, devices)
    lr_schedule = check_schedule(lr_schedule)
    if not isinstance(module, EpochMeans):
        if lr_schedule != "constant":
            raise TypeError(f"lr_schedule={lr_schedule!r} needs one of rnnkit's training modules; "
                            f"{type(module).__name__} configures its own optimizer (add a scheduler there)")
    else:
        module.lr_schedule = lr_schedule
        module.lr_monitor = "val_loss" if validation is not None else "train_loss"
    all_callbacks = list(callbacks or [])
    if log_dir and lr_schedule != "constant":
        all_callbacks.append(pl.callbacks.LearningRateMonitor())
    if progress:
        all_callbacks.append(pl.callbacks.RichProgressBar())
    if validation is not None and patience:
        all_callbacks.append(pl.callbacks.EarlyStopping("val_loss", patience=patience))
    resume_from = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        # one checkpoint, "last.ckpt", replaced after every epoch (Lightning writes save_last files only
        # when a top-k checkpoint was saved too, so the latest checkpoint itself is named "last")
        all_callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, filename=LAST_CHECKPOINT[:-5],
                                                          save_top_k=1, enable_version_counter=False,
                                                          save_on_train_epoch_end=True))
        if resume:
            resume_from = checkpoint_dir / LAST_CHECKPOINT
            if not resume_from.is_file():
                raise FileNotFoundError(f"resume=True, but there is no {LAST_CHECKPOINT} in {checkpoint_dir} to resume from")
    elif resume:
        raise ValueError("resume=True needs the checkpoint_dir that the interrupted fit wrote to")
    if "spawn" in str(strategy):
        torch.multiprocessing.set_sharing_strategy("file_system")
    if devices != 1:
        all_callbacks.append(ReleaseProcessGroup())
    loggers = [pl.loggers.CSVLogger(log_dir), pl.loggers.TensorBoardLogger(log_dir)] if log_dir else False
    with quiet_lightning(), _keep_sigint_handler():
        trainer = pl.Trainer(max_epochs=epochs, gradient_clip_val=gradient_clip, callbacks=all_callbacks,
                             logger=loggers, enable_progress_bar=progress, enable_checkpointing=checkpoint_dir is not None,
                             enable_model_summary=False, log_every_n_steps=1, accelerator=accelerator,
                             devices=devices, strategy=strategy)
        try:
            with warnings.catch_warnings():
                if resume:  # resuming means the checkpoint directory is not empty, on purpose
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                trainer.fit(module, train, validation, ckpt_path=resume_from)
        except SystemExit:
            if not trainer.interrupted:
                raise
            where = (f"the last complete epoch is saved in {checkpoint_dir / LAST_CHECKPOINT}; fit again with "
                     "resume=True to continue" if checkpoint_dir is not None
                     else "pass checkpoint_dir=... to be able to resume")
            raise KeyboardInterrupt(f"training interrupted at epoch {trainer.current_epoch}: {where}") from None
        finally:
            module.cpu()
    return trainer


def check_training_options(task, options: dict, reserved: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an option of ``task.fit(**options)`` that :func:`fit_module` does not take (or that
    the task sets itself: ``reserved``), with a TypeError naming the task, the option and the ones it takes; an
    option of the task's constructor (``seed``, ``learning_rate``, ...) or a near miss is pointed out."""
    known = [name for name in inspect.signature(fit_module).parameters
             if name not in ("module", "train", "validation", "epochs", *reserved)]
    unknown = [name for name in options if name not in known]
    if not unknown:
        return
    name, owner = unknown[0], type(task).__name__
    if name in inspect.signature(type(task)).parameters:
        hint = f" ({name} is set when the model is made: {owner}(..., {name}=...))"
    elif name in reserved:
        hint = f" ({owner} sets {name} itself)"
    else:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TypeError(f"{owner}.fit() got an unknown option {name!r}{hint}; besides its own arguments it takes "
                    f"the training options {', '.join(known)}")


def _check_accelerator(accelerator: str, devices: int) -> str:
    """``accelerator``, or a ValueError that says why it cannot be used here."""
    check_choice("accelerator", accelerator, ("cpu", "gpu", "auto"))
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError(f"accelerator='gpu', but no CUDA GPU is available here ({torch_build()})")
    if devices != 1 and accelerator != "cpu":
        raise ValueError(f"devices={devices} trains data-parallel in CPU processes (gloo); it needs accelerator='cpu', "
                         f"got {accelerator!r}")
    return accelerator
