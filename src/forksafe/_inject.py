"""``@forksafe.inject(model=...)``: hand a per-process model to a worker function."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from forksafe._api import load_model
from forksafe._proxy import ModelProxy

__all__ = ["inject"]

F = TypeVar("F", bound=Callable[..., Any])
_INJECTABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def inject(**models: str | os.PathLike[str] | ModelProxy) -> Callable[[F], F]:
    """Pass a per-process model as the named keyword arguments of the decorated function.

    Each value is a path (turned into ``forksafe.load_model(path)``) or an
    existing [`ModelProxy`][forksafe.ModelProxy]. Nothing loads at
    decoration time: each process loads on its first call. The wrapper keeps ``__name__``,
    ``__doc__`` and ``__wrapped__`` and shows a signature without the
    injected parameters, so ``inspect.signature`` and Celery's argument
    checking see what callers pass. An explicit ``model=...`` at a call wins.
    Works on ``async def`` functions too. Stack it under ``@app.task``:

        @app.task
        @forksafe.inject(model="model.keras")
        def predict(rows, model):
            return model.predict(rows).tolist()

    Raises:
        TypeError: no models named, a value that is neither a path nor a
            proxy, or a name the function cannot take as a keyword.
    """
    proxies = _proxies(models)

    def decorate(fn: F) -> F:
        return _wrap(fn, proxies)  # type: ignore[return-value]

    return decorate


def _proxies(models: dict[str, str | os.PathLike[str] | ModelProxy]) -> dict[str, ModelProxy]:
    """A proxy for each name: the one given, or one of the path given."""
    if not models:
        raise TypeError("inject() needs at least one name=model keyword")
    proxies: dict[str, ModelProxy] = {}
    for name, value in models.items():
        if isinstance(value, ModelProxy):
            proxies[name] = value
        elif isinstance(value, (str, os.PathLike)):
            proxies[name] = load_model(value)
        else:
            raise TypeError(
                f"inject({name}=...) takes a model path or a forksafe.ModelProxy, got "
                f"{type(value).__name__}"
            )
    return proxies


def _wrap(fn: Callable[..., Any], proxies: dict[str, ModelProxy]) -> Callable[..., Any]:
    """``fn`` with the proxies as keyword defaults, and a signature without them."""
    signature = inspect.signature(fn)
    for name in proxies:
        parameter = signature.parameters.get(name)
        if parameter is None or parameter.kind not in _INJECTABLE:
            raise TypeError(
                f"{fn.__qualname__}() has no parameter {name!r} that can be passed by "
                "keyword, so the model cannot be injected into it"
            )
    public = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in proxies]
    )
    wrapper: Any
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            for key, proxy in proxies.items():
                kwargs.setdefault(key, proxy)
            return await fn(*args, **kwargs)

    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for key, proxy in proxies.items():
                kwargs.setdefault(key, proxy)
            return fn(*args, **kwargs)

    wrapper.__signature__ = public
    wrapper.__forksafe_models__ = dict(proxies)
    return wrapper  # type: ignore[no-any-return]
