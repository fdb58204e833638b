import json

import pytest
import torch

from rnnkit.io import ModelFileError, SCHEMA_VERSION, atomic_write_text, load_model, save_model


def save(tmp_path, **config):
    return save_model(tmp_path / "m", "forecaster", config, {"w": torch.arange(6.0).view(2, 3)})


def test_round_trip_and_no_pickle(tmp_path):
    save(tmp_path, alpha=1)
    config, weights = load_model(tmp_path / "m", "forecaster")
    assert config["alpha"] == 1 and config["schema_version"] == SCHEMA_VERSION and config["task"] == "forecaster"
    assert torch.equal(weights["w"], torch.arange(6.0).view(2, 3))
    assert (tmp_path / "m" / "model.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle stream


def test_saving_again_replaces_the_model_whole(tmp_path):
    save(tmp_path, alpha=1)
    save(tmp_path, alpha=2)
    assert load_model(tmp_path / "m", "forecaster")[0]["alpha"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or backup left behind


def test_a_failed_save_leaves_the_old_model_intact(tmp_path):
    save(tmp_path, alpha=1)
    with pytest.raises(TypeError):
        save_model(tmp_path / "m", "forecaster", {"bad": object()}, {"w": torch.zeros(1)})
    assert load_model(tmp_path / "m", "forecaster")[0]["alpha"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="is not an rnnkit model directory"):
        save(tmp_path)
    assert (tmp_path / "m" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:20]),
     "corrupted or truncated"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda d: (d / "config.json").write_text(json.dumps({"schema_version": 99, "task": "forecaster"})),
     "schema 99, newer than this rnnkit reads"),
    (lambda d: (d / "config.json").write_text(json.dumps({"schema_version": 1, "task": "classifier"})),
     "holds a 'classifier' model, not a 'forecaster' model"),
])
def test_damaged_or_foreign_files_are_named(tmp_path, damage, message):
    save(tmp_path)
    damage(tmp_path / "m")
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "m", "forecaster")


def test_atomic_text_write(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b.md", "hello")
    assert path.read_text() == "hello" and [p.name for p in path.parent.iterdir()] == ["b.md"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from rnnkit.io import atomic_file

    path = atomic_write_text(tmp_path / "b.md", "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(path) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["b.md"]


def test_atomic_writes_get_the_permissions_a_plain_write_would(tmp_path):
    """tempfile makes 0o600 files and 0o700 directories; what rnnkit writes atomically gets what open() and
    mkdir() give under the umask instead (files, model directories, figures)."""
    import os
    import stat

    import matplotlib.pyplot as plt

    from rnnkit.plots.gradients import save_figure

    previous = os.umask(0o027)
    try:
        text = atomic_write_text(tmp_path / "report.md", "hello")
        model = save(tmp_path)
        figure, _ = plt.subplots()
        picture = save_figure(figure, tmp_path / "flow.png")
        plt.close(figure)
        (tmp_path / "plain.txt").write_text("x")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(text) == mode(picture) == mode(model / "config.json") == mode(tmp_path / "plain.txt") == 0o640
    assert mode(model) == mode(tmp_path / "plain_dir") == 0o750


def test_the_umask_is_read_without_changing_it(monkeypatch):
    """Where /proc says it, the umask is read there (os.umask is never called); elsewhere it is read by setting
    it, and left as it was."""
    import os

    from rnnkit import io

    previous = os.umask(0o027)
    try:
        if os.path.exists("/proc/self/status"):
            monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
            assert io.default_mode() == 0o640 and io.default_mode(directory=True) == 0o750
            monkeypatch.undo()
        real_open = open
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: (_ for _ in ()).throw(OSError("no /proc"))
                            if str(path).startswith("/proc") else real_open(path, *a, **k))
        assert io.default_mode() == 0o640
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(previous)
