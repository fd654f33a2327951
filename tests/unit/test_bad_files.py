"""Every kind of bad model file is a ModelLoadError naming the path and what was wrong."""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

import forksafe
from tests.models import Models
from tests.support.children import run_python


def load_error(path: str | pathlib.Path, **kwargs: object) -> forksafe.ModelLoadError:
    """Use a proxy of ``path`` and return the ModelLoadError it must raise."""
    proxy = forksafe.load_model(path, **kwargs)
    with pytest.raises(forksafe.ModelLoadError) as caught:
        proxy.predict_on_batch  # noqa: B018
    error = caught.value
    assert isinstance(error, OSError)
    assert isinstance(error, forksafe.ForkSafeError)
    assert str(os.path.abspath(path)) in str(error)
    assert not forksafe.info(proxy).loaded
    return error


def test_missing_file(tmp_path: pathlib.Path) -> None:
    """A path that does not exist."""
    assert "not found" in str(load_error(tmp_path / "nope.keras"))


def test_empty_file(tmp_path: pathlib.Path) -> None:
    """A zero-byte file."""
    (tmp_path / "empty.keras").write_bytes(b"")
    assert "empty" in str(load_error(tmp_path / "empty.keras"))


def test_directory_without_saved_model_pb(tmp_path: pathlib.Path) -> None:
    """A directory that is not a SavedModel."""
    (tmp_path / "dir").mkdir()
    assert "no saved_model.pb" in str(load_error(tmp_path / "dir"))


def test_unsupported_suffix(tmp_path: pathlib.Path, models: Models) -> None:
    """A valid model under an unknown suffix points to loader=."""
    target = tmp_path / "model.bin"
    target.write_bytes(pathlib.Path(models.keras).read_bytes())
    error = str(load_error(target))
    assert "unsupported model format '.bin'" in error
    assert "loader=" in error


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_keras_file(tmp_path: pathlib.Path, models: Models, fraction: float) -> None:
    """A .keras file cut short anywhere."""
    data = pathlib.Path(models.keras).read_bytes()
    target = tmp_path / "cut.keras"
    target.write_bytes(data[: int(len(data) * fraction)])
    assert "not a zip archive" in str(load_error(target))


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9])
def test_truncated_h5_file(tmp_path: pathlib.Path, models: Models, fraction: float) -> None:
    """An .h5 file cut short: h5py's own error, wrapped and chained."""
    data = pathlib.Path(models.h5).read_bytes()
    target = tmp_path / "cut.h5"
    target.write_bytes(data[: int(len(data) * fraction)])
    error = load_error(target)
    assert "could not load model" in str(error)
    assert error.__cause__ is not None


def test_corrupt_zip_contents(tmp_path: pathlib.Path) -> None:
    """A real zip archive whose members are garbage: Keras' error is wrapped and chained."""
    target = tmp_path / "garbage.keras"
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("model.weights.h5", b"\x00" * 64)
    error = load_error(target)
    assert "could not load model" in str(error)
    assert error.__cause__ is not None


def test_pickle_renamed_to_keras(tmp_path: pathlib.Path) -> None:
    """A pickle with a .keras name is refused before anything unpickles it."""
    target = tmp_path / "evil.keras"
    target.write_bytes(pickle.dumps({"not": "a model"}))
    assert "not a zip archive" in str(load_error(target))


def test_garbage_h5(tmp_path: pathlib.Path) -> None:
    """An .h5 file with no HDF5 signature."""
    target = tmp_path / "text.h5"
    target.write_text("hello")
    assert "no HDF5 signature" in str(load_error(target))


@pytest.mark.parametrize("which", ["keras", "h5"])
def test_lambda_layer_stays_refused_by_safe_mode(models: Models, which: str) -> None:
    """A Lambda layer's stored code is refused (.keras and .h5) with a hint; opt-out works."""
    path = models.lambda_keras if which == "keras" else models.lambda_h5
    error = str(load_error(path))
    assert "safe_mode=False" in error
    proxy = forksafe.load_model(path, safe_mode=False)
    x, _ = models.reference()
    np.testing.assert_allclose(proxy.predict_on_batch(x), x * 2.0, atol=1e-6)


def test_tf_keras_h5_lambda_is_refused_without_running_it(models: Models) -> None:
    """tf_keras would run an .h5 file's Lambda bytecode: forksafe refuses first, naming it."""
    out = run_python(
        f"""
        import numpy as np, forksafe, tf_keras
        path = {models.lambda_tf_keras_h5!r}
        tf_keras.models.load_model(path)  # the bare loader: no safe_mode for .h5
        proxy = forksafe.load_model(path)
        try:
            proxy.predict_on_batch
        except forksafe.ModelLoadError as exc:
            print("refused:", exc)
        trusted = forksafe.load_model(path, safe_mode=False)
        x = np.ones((2, 4), dtype="float32")
        print("trusted:", np.allclose(trusted.predict_on_batch(x), x * 2.0))
        """,
        timeout=120,
        TF_USE_LEGACY_KERAS="1",
    )
    assert "refused:" in out and "'double'" in out and "safe_mode=False" in out
    assert "trusted: True" in out
