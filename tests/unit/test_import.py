"""Importing forksafe and creating proxies imports no framework and starts nothing."""

from __future__ import annotations

from tests.models import Models
from tests.support.children import run_python


def test_import_and_proxy_creation_import_no_framework(tmp_path: object) -> None:
    """Import forksafe, load_model, lazy_model, repr, info and pickle leave frameworks alone."""
    out = run_python("""
        import pickle, sys
        import forksafe
        p = forksafe.load_model("missing/model.keras")
        q = forksafe.lazy_model(dict, a=1)
        repr(p); str(q); forksafe.info(p); forksafe.runtime_state()
        pickle.loads(pickle.dumps(p))
        heavy = [m for m in ("tensorflow", "keras", "tf_keras", "jax", "torch") if m in sys.modules]
        print(heavy, forksafe.info(p).loaded)
    """)
    assert out == "[] False"


def test_if_model_at_import_time_loads_nothing(models: Models) -> None:
    """``if MODEL:``, a set of models and ``MODEL == other`` at import time load nothing."""
    out = run_python(f"""
        import sys
        import forksafe
        MODEL = forksafe.load_model({models.keras!r})
        OTHER = forksafe.load_model({models.keras!r})
        if MODEL:
            REGISTRY = {{MODEL: "main"}}
        same = MODEL == MODEL and MODEL != OTHER and OTHER not in REGISTRY
        heavy = [m for m in ("tensorflow", "keras") if m in sys.modules]
        print(heavy, same, forksafe.info(MODEL).loaded)
    """)
    assert out == "[] True False"


def test_public_api_is_sorted_and_complete() -> None:
    """__all__ is sorted and every name in it exists."""
    import forksafe

    assert list(forksafe.__all__) == sorted(forksafe.__all__)
    for name in forksafe.__all__:
        assert hasattr(forksafe, name), name
