"""What a proxy loads from: a path and loader, or a factory; and the default loaders.

A source is plain, picklable data: it is what crosses process boundaries in
place of the model.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from forksafe._errors import ForkSafeError, ModelLoadError
from forksafe._frameworks import PRELOADABLE

__all__ = ["Source"]

_KERAS_SUFFIXES = (".keras",)
_H5_SUFFIXES = (".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock, at 0 or a power of two >= 512.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_SAVED_MODEL_ENDPOINTS = ("serve", "serving_default")


def legacy_keras() -> bool:
    """TensorFlow's own switch for tf_keras (Keras 2) instead of Keras 3."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True")


@dataclass(frozen=True, eq=False)
class Source:
    """How to produce the model: ``loader(path, **kwargs)`` or ``factory(*args, **kwargs)``."""

    path: str | None = None
    factory: Callable[..., Any] | None = None
    loader: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A short human description, for reprs and messages; never loads."""
        if self.path is not None:
            return self.path
        return f"{_callable_name(self.factory)}()"

    def frameworks(self) -> tuple[str, ...]:
        """What a host will import to load this source.

        The frameworks this process has imported, and the default loader's.
        """
        wanted = {name for name in PRELOADABLE if name in sys.modules}
        if self.path is not None and self.loader is None:
            wanted.add("tf_keras" if legacy_keras() else "keras")
        return tuple(sorted(wanted))

    def identity_paths(self) -> tuple[str, ...]:
        """The files that define this model: its path, and the loader's or factory's code.

        A shared host is the same host only while these files are the same
        (``forksafe._host.identity``). Files a factory reads by itself are
        not known here: pass such a file as ``load_model(path, loader=...)``.
        """
        paths = [self.path] if self.path is not None else []
        for fn in (self.loader, self.factory):
            code = _code_file(fn)
            if code is not None:
                paths.append(code)
        return tuple(paths)

    def load(self) -> Any:
        """Produce the model in this process, or raise ``ModelLoadError``."""
        if self.path is None:
            return _call(self.factory, self.args, self.kwargs, what=self.describe())
        if self.loader is not None:
            return _call(self.loader, (self.path, *self.args), self.kwargs, what=self.path)
        fmt = check_model_path(self.path)
        if fmt == "h5" and self.kwargs.get("safe_mode", True) is not False:
            refuse_unsafe_h5(self.path)
        try:
            loader = _default_loader(fmt)
        except ImportError as exc:  # the framework, or one it needs, is not installed here
            raise ModelLoadError(
                f"could not load model from {self.path!r}: its loader's framework does not "
                f"import here ({type(exc).__name__}: {exc}); install it (for Keras: "
                "pip install 'forksafe[keras]') or pass loader="
            ) from exc
        return _call(loader, (self.path,), self.kwargs, what=self.path)


def _code_file(fn: Any) -> str | None:
    """The source file of the module that defines ``fn``, if it has one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def check_model_path(path: str) -> str:
    """Check a path for the default loader; return ``"keras"``, ``"h5"`` or ``"savedmodel"``.

    These checks are cheap and catch the common mistakes with a plain message
    before any framework code runs.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path!r} (no such file or directory)")
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, name)) for name in _SAVED_MODEL_FILES):
            return "savedmodel"
        raise ModelLoadError(
            f"{path!r} is a directory but not a TensorFlow SavedModel (it has no "
            "saved_model.pb); pass a .keras or .h5 file or a SavedModel directory"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _KERAS_SUFFIXES + _H5_SUFFIXES:
        raise ModelLoadError(
            f"unsupported model format {suffix or '(no suffix)'!r} for {path!r}: expected a "
            ".keras file, an .h5/.hdf5 file or a SavedModel directory; pass loader= to load "
            "other formats"
        )
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise ModelLoadError(f"model file {path!r} is empty (0 bytes)")
        if suffix in _KERAS_SUFFIXES:
            if not zipfile.is_zipfile(path):
                raise ModelLoadError(
                    f"{path!r} is not a valid .keras file: it is not a zip archive "
                    "(truncated, corrupt, or another format renamed to .keras)"
                )
            return "keras"
        with open(path, "rb") as f:
            for offset in _HDF5_OFFSETS:
                f.seek(offset)
                if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return "h5"
    except OSError as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot read model file {path!r}: {exc}") from exc
    raise ModelLoadError(
        f"{path!r} is not a valid HDF5 model file: no HDF5 signature (truncated, corrupt, "
        "or another format renamed)"
    )


def _lambdas(config: Any) -> Iterator[str]:
    """Names of the ``Lambda`` layers in a Keras config whose function is Python bytecode."""
    if isinstance(config, list):
        for item in config:
            yield from _lambdas(item)
    elif isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") == "Lambda" and isinstance(inner, dict):
            function = inner.get("function")
            if inner.get("function_type") == "lambda" or (
                isinstance(function, dict) and function.get("class_name") == "__lambda__"
            ):
                yield str(inner.get("name", "?"))
        for value in config.values():
            yield from _lambdas(value)


def refuse_unsafe_h5(path: str) -> None:
    """Keras' ``safe_mode`` for HDF5 files too: refuse ``Lambda`` layers holding bytecode.

    tf_keras has no ``safe_mode`` for ``.h5`` files: it would run the
    bytecode stored in them. The file's config is read with h5py, before any
    framework code runs; a file that cannot be read this way is left to the
    loader.
    """
    try:
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
        text = raw.decode() if isinstance(raw, bytes) else raw
        found = list(_lambdas(json.loads(text))) if isinstance(text, str) else []
    except Exception:  # not ours to judge: the loader reports what is wrong
        return
    if found:
        raise ModelLoadError(
            f"{path!r} has Lambda layers whose code is stored in the file "
            f"({', '.join(repr(n) for n in found)}); loading it would run that code. "
            "Pass safe_mode=False only if you trust its author, as with Keras' .keras files"
        )


def _default_loader(fmt: str) -> Callable[..., Any]:
    if legacy_keras():
        import tf_keras

        load: Callable[..., Any] = tf_keras.models.load_model
        return load
    if fmt == "savedmodel":
        return load_saved_model
    import keras

    load = keras.models.load_model
    return load


def load_saved_model(path: str, **_ignored: Any) -> Any:
    """Load a SavedModel directory with Keras 3, inference only.

    Keras 3's ``load_model`` refuses SavedModels, so the directory is wrapped
    in ``keras.layers.TFSMLayer`` (endpoint ``serve``, as written by
    ``model.export()``, else ``serving_default``) inside a ``keras.Sequential``:
    ``predict``, ``predict_on_batch`` and ``__call__`` work; training does not.
    Keras' load options (``compile``, ``custom_objects`` ...) do not apply.
    """
    import keras

    errors: list[str] = []
    for endpoint in _SAVED_MODEL_ENDPOINTS:
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
        except ValueError as exc:
            if "endpoint" not in str(exc):
                raise
            errors.append(str(exc))
            continue
        return keras.Sequential([layer], name=os.path.basename(os.path.normpath(path)))
    raise ModelLoadError(
        f"SavedModel {path!r} has none of the endpoints {_SAVED_MODEL_ENDPOINTS}; "
        f"pass loader= to load it another way ({errors[-1]})"
    )


def _call(fn: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, what: str) -> Any:
    try:
        model = fn(*args, **kwargs)
    except ForkSafeError:
        raise
    except Exception as exc:
        hint = ""
        if "safe_mode" in str(exc):
            hint = (
                " (Keras refused to run code stored in the file; pass safe_mode=False "
                "only if you trust its author)"
            )
        raise ModelLoadError(
            f"could not load model from {what!r}: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    if model is None:
        raise ModelLoadError(
            f"{_callable_name(fn)} returned None for {what!r}; a loader or factory must "
            "return the model"
        )
    return model
