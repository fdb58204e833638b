"""Files that are never left half-written, and rnnkit's model files.

A model file is a directory: ``config.json`` (schema version, task, hyper-parameters, fitted state such
as scalers) and ``model.safetensors`` (the weights; never pickle). Directories are written beside the
target and renamed into place, so a reader sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(ValueError):
    """A model directory that cannot be loaded; the message says what is wrong and where."""


def default_mode(directory: bool = False) -> int:
    """The permissions a plain ``open``/``mkdir`` would give under the process's umask (0o644 and 0o755 under
    the usual 022): ``tempfile`` makes its files 0o600 and directories 0o700, which would otherwise reach the
    renamed result."""
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    """The process's umask, read from /proc where it can be: setting it to read it (the only portable way)
    would leave it 0 for an instant, and a file another thread creates then would be world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # briefly the strictest mask rather than none
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (ending in ``suffix``) to write; when the block ends without an
    error, give it the permissions a plain write would (:func:`default_mode`) and rename it onto ``path``, so a
    reader sees the old file or the new one, never a part; on an error, remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one, never a part)."""
    with atomic_file(path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def save_model(directory: str | os.PathLike, task: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` and the weights to ``directory`` atomically (replacing an older model there)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        staging.chmod(default_mode(directory=True))
        document = {"schema_version": SCHEMA_VERSION, "task": task, "rnnkit_version": _version(), **config}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(staging / WEIGHTS_FILE))
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    if not (target / CONFIG_FILE).exists():
        raise FileExistsError(f"{target} exists and is not an rnnkit model directory; refusing to replace it")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_model(directory: str | os.PathLike, task: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and validate a model directory written by :func:`save_model` for ``task``.

    Raises:
        ModelFileError: missing or unreadable files, a newer schema, another task, truncated weights.
    """
    path = Path(directory)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise ModelFileError(f"{path} is not an rnnkit model: {required.name} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{config_path} is not valid JSON ({error}); the file is corrupted") from error
    version = config.get("schema_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{config_path} has no integer schema_version; it was not written by rnnkit")
    if version > SCHEMA_VERSION:
        raise ModelFileError(f"{path} uses model-file schema {version}, newer than this rnnkit reads "
                             f"({SCHEMA_VERSION}); upgrade rnnkit")
    if config.get("task") != task:
        raise ModelFileError(f"{path} holds a {config.get('task')!r} model, not a {task!r} model")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{weights_path} cannot be read ({error}); the file is corrupted or truncated") from error
    return config, weights


def model_task(directory: str | os.PathLike) -> str:
    """The task a model directory holds, read from its config.json (the weights are not read).

    Raises:
        ModelFileError: not a model directory, or a config.json that names no task.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{directory} is not an rnnkit model: {CONFIG_FILE} is missing")
    try:
        task = json.loads(path.read_text(encoding="utf-8")).get("task")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ModelFileError(f"{path} is not a valid model configuration ({error})") from error
    if not isinstance(task, str):
        raise ModelFileError(f"{path} names no task")
    return task


def check_state_dict(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Load ``weights`` into ``module``, naming any missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{where}: weights do not match the configuration (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ModelFileError(f"{where}: {name} has shape {list(tensor.shape)}, the configuration needs "
                                 f"{list(expected[name].shape)}")
    module.load_state_dict(weights)


def _version() -> str:
    from rnnkit import __version__

    return __version__
