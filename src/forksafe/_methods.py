"""Methods a proxy hands out: they follow the proxy across a fork and re-enter its graph.

They also hold the proxy's call lock, for backends that need one (``_serial``).

``predict = MODEL.predict`` taken in a parent and called in a fork child
must not reach the parent's model (whose runtime is dead in the child: a
hang) or the parent's host connection (answers meant for the parent).
A method handed out by a proxy remembers the fork generation it was taken
in; called in another, it asks the proxy of the calling process for the
same method.

A method of the model's class (``kept_method``) is a bound method of the
proxy itself, kept in the proxy's own dict: reaching and calling it runs one
small function, where a ``wrapt`` proxy of the method would run its
attribute lookup and a Python ``__call__`` (microseconds a call, with the
caches as a prediction leaves them). It has the method's name, docstring and
signature, and pickles as ``getattr(proxy, name)``. Any other callable
(an instance attribute in graph mode, a host's remote method) is seen
through a ``ProxyMethod``, a ``wrapt`` proxy.
"""

from __future__ import annotations

import functools
from types import MethodType
from typing import TYPE_CHECKING, Any

import wrapt

from forksafe import _forking

__all__ = ["ProxyMethod", "kept_method"]

if TYPE_CHECKING:
    _Base = wrapt.ObjectProxy[Any]
else:
    _Base = wrapt.ObjectProxy


def kept_method(proxy: Any, name: str, held: Any, function: Any) -> MethodType:
    """``proxy.<name>`` for ``function``, found on the model's class: a bound method of ``proxy``.

    The proxy keeps it in its own dict, where nothing checks it on the way:
    each call checks that the model still has ``function`` under ``name``
    (a test's ``mock.patch.object`` on its class, or an attribute set on the
    bare model, may have replaced it), else drops it and calls what the
    model has now.
    """
    generation = _forking.generation
    model = held.model
    owner = held.owner
    lock = held.call_lock

    def method(_proxy: Any, /, *args: Any, **kwargs: Any) -> Any:
        if generation != _forking.generation:  # kept before a fork
            proxy._self_forget(name, bound)
            return getattr(proxy, name)(*args, **kwargs)
        now = getattr(model, name, None)
        if type(now) is not MethodType or now.__func__ is not function or now.__self__ is not model:
            proxy._self_forget(name, bound)
            return getattr(proxy, name)(*args, **kwargs)
        if lock is None:
            if owner is None:
                return now(*args, **kwargs)
            return owner.call(now, *args, **kwargs)
        with lock:
            if owner is None:
                return now(*args, **kwargs)
            return owner.call(now, *args, **kwargs)

    functools.update_wrapper(method, function)
    bound = MethodType(method, proxy)
    return bound


class ProxyMethod(_Base):
    """A callable of a proxy's model, bound to the process it was taken in."""

    # One attribute (proxy, name, held, generation): each ``_self_`` write
    # through wrapt costs about 100 ns.
    _self_of: tuple[Any, str, Any, int] = (None, "", None, -1)

    def __init__(self, method: Any, proxy: Any, name: str, held: Any) -> None:
        super().__init__(method)
        self._self_of = (proxy, name, held, _forking.generation)

    def __wrapped_setattr_fixups__(self) -> None:
        # wrapt looks this hook up when ``__wrapped__`` is set; defining it
        # spares that lookup two AttributeErrors (on us, then on the method).
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        proxy, name, held, generation = self._self_of
        if generation != _forking.generation:  # taken before a fork
            return getattr(proxy, name)(*args, **kwargs)
        # In the generation it was taken in, what the proxy held then is what
        # it holds now (a record is only replaced after a fork).
        owner = held.owner
        lock = held.call_lock
        if lock is None:
            if owner is None:
                return self.__wrapped__(*args, **kwargs)
            return owner.call(self.__wrapped__, *args, **kwargs)
        with lock:
            if owner is None:
                return self.__wrapped__(*args, **kwargs)
            return owner.call(self.__wrapped__, *args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # The proxy pickles as its source: the receiver gets this method of
        # the model as loaded there.
        return getattr, self._self_of[:2]

    def __repr__(self) -> str:
        return repr(self.__wrapped__)
