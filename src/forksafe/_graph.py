"""The TF1 graph and session that own a model, re-entered around every call.

In TF1 graph mode (``tf.compat.v1.disable_eager_execution()``, or a load
inside ``with graph.as_default(), session.as_default():``) the default graph
and session are per thread, so a model used from another thread fails with
``Tensor ... is not an element of this graph``. In eager mode none of this
applies and nothing here is on the call path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from forksafe import _scopes

__all__ = ["GraphOwner", "load_owned"]


class GraphOwner:
    """The graph and session a model was loaded in."""

    __slots__ = ("graph", "session")

    def __init__(self, graph: Any, session: Any) -> None:
        self.graph = graph
        self.session = session

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` with the owning graph and session as this thread's defaults."""
        with self.graph.as_default(), self.session.as_default():
            return fn(*args, **kwargs)


def load_owned(load: Callable[[], Any]) -> tuple[Any, GraphOwner | None]:
    """Run ``load`` and return the model with the graph and session that own it.

    The load never sees the caller's traces or Keras scopes (see
    ``forksafe._scopes``): first use inside a ``tf.function``, a
    ``tf.data`` map, a training step or a ``Lambda`` layer loads the model
    as a plain first use would. Whether the model lives in a TF1 graph
    follows how the process runs (``disable_eager_execution()``), never the
    frame. Graph mode needs TensorFlow imported already (it is switched on
    through it), so an eager process pays nothing here. When the caller
    entered a default session, that session and its graph own the model;
    otherwise a private graph and session do, so that a later
    ``clear_session()`` on the loading thread (which closes Keras' own
    session) cannot break the model.
    """
    tf = sys.modules.get("tensorflow")
    graph_mode = tf is not None and not _scopes.process_eager()
    session = tf.compat.v1.get_default_session() if tf is not None and graph_mode else None
    if _scopes.inside() is not None:
        return _scopes.run_outside(_load, load, graph_mode, session)
    return _load(load, graph_mode, session)


def _load(load: Callable[[], Any], graph_mode: bool, session: Any) -> tuple[Any, GraphOwner | None]:
    if not graph_mode:
        return load(), None
    v1 = sys.modules["tensorflow"].compat.v1
    graph = session.graph if session is not None else v1.Graph()
    if session is None:
        session = v1.Session(graph=graph)
    with graph.as_default(), session.as_default():
        model = load()
    return model, GraphOwner(graph, session)
