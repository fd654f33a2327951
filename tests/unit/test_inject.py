"""@forksafe.inject: per-process models as keyword arguments, invisible to callers."""

from __future__ import annotations

import asyncio
import inspect

import numpy as np
import pytest

import forksafe
from tests.models import Models
from tests.support.fakes import NumpyModel

SHARED = forksafe.lazy_model(NumpyModel, 3.0)


@forksafe.inject(model=SHARED)
def scale(rows: list[float], factor: float = 1.0, *, model: object) -> list[float]:
    """Scale rows with the injected model."""
    return (model.predict(np.asarray(rows)) * factor).tolist()  # type: ignore[attr-defined]


def test_injects_the_proxy_and_hides_the_parameter() -> None:
    """The model arrives by keyword; the signature, name, doc and __wrapped__ are kept."""
    assert scale([1.0, 2.0]) == [3.0, 6.0]
    assert scale([1.0], factor=2.0) == [6.0]
    assert list(inspect.signature(scale).parameters) == ["rows", "factor"]
    assert scale.__name__ == "scale" and scale.__doc__ == "Scale rows with the injected model."
    assert inspect.signature(scale.__wrapped__).parameters["model"].kind.name == "KEYWORD_ONLY"


def test_explicit_model_overrides_the_injection() -> None:
    """A caller's model= wins."""
    assert scale([1.0], model=NumpyModel(10.0)) == [10.0]


def test_path_values_become_lazy_proxies(models: Models) -> None:
    """A path becomes a proxy that loads on the first call, in the calling process."""

    @forksafe.inject(model=models.keras)
    def predict(x: np.ndarray, model: forksafe.ModelProxy) -> np.ndarray:
        return np.asarray(model.predict_on_batch(x))

    proxy = predict.__forksafe_models__["model"]  # type: ignore[attr-defined]
    assert not forksafe.info(proxy).loaded
    x, reference = models.reference()
    np.testing.assert_allclose(predict(x), reference, atol=1e-5)
    assert forksafe.info(proxy).loads == 1


def test_async_functions() -> None:
    """async def functions get the model too and stay coroutine functions."""

    @forksafe.inject(model=SHARED)
    async def predict(x: float, model: NumpyModel) -> float:
        return float(model.predict(np.asarray(x)))

    assert inspect.iscoroutinefunction(predict)
    assert asyncio.run(predict(2.0)) == 6.0


def test_bad_uses_are_clear_errors() -> None:
    """No model, a wrong value, or a parameter that does not exist."""
    with pytest.raises(TypeError, match="at least one"):
        forksafe.inject()
    with pytest.raises(TypeError, match=r"path or a forksafe\.ModelProxy"):
        forksafe.inject(model=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no parameter 'model'"):
        forksafe.inject(model=SHARED)(lambda x: x)
    with pytest.raises(TypeError, match="no parameter 'model'"):

        @forksafe.inject(model=SHARED)
        def positional_only(model: object, /) -> None: ...
