"""``ModelProxy``: a lazy, per-process model behind a ``wrapt`` object proxy.

A proxy's state is two records: its ``Options`` (immutable; what it pickles
as) and the ``Held`` record of what this process holds (the model or its
host connection, the graph that owns it, the pid, the isolation in effect,
the call lock), replaced whole when the model loads and dropped after a fork.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import pickle
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType
from typing import TYPE_CHECKING, Any

import wrapt

from forksafe import _churn, _forking, _frameworks, _runtime, _scopes
from forksafe._errors import ForkSafeError, HostError, InheritedRuntimeError, warn
from forksafe._graph import GraphOwner, load_owned
from forksafe._methods import ProxyMethod, kept_method
from forksafe._options import Isolation, Options
from forksafe._serial import call_lock

__all__ = ["Held", "ModelProxy"]

_warned_pid = 0  # the ForkSafeWarning about going out of process: once per process

if TYPE_CHECKING:
    _Base = wrapt.BaseObjectProxy[Any]
else:
    _Base = wrapt.BaseObjectProxy


@dataclass(frozen=True, slots=True)
class Held:
    """What this process holds for one proxy; replaced whole, never changed.

    Attributes:
        model: the model, or the ``RemoteModel`` that stands in for it.
        owner: the TF1 graph and session that own the model, if any.
        pid: the process that loaded it.
        in_effect: where it runs: ``INPROCESS``, ``PROCESS`` or ``SHARED``.
        call_lock: held around calls, for backends that need one (``_serial``).
        wraps_callables: callables taken from the model need a ``ProxyMethod``
            (graph re-entry, the call lock, or a host connection to follow).
        methods: the method handed out for each name (a ``kept_method`` or a
            ``ProxyMethod``), with what it wraps (function and instance), so
            that the next access of the same method reuses it instead of
            building another, and whether the proxy keeps it in its own dict.
    """

    model: Any
    owner: GraphOwner | None
    pid: int
    in_effect: Isolation
    call_lock: threading.RLock | None
    wraps_callables: bool
    methods: dict[str, tuple[Any, Any, Any, bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any, owner: GraphOwner | None, in_effect: Isolation) -> Held:
        """The record for ``model`` just loaded (or reached) in this process."""
        lock = call_lock(model) if in_effect is Isolation.INPROCESS else None
        wraps = owner is not None or lock is not None or in_effect.hosted
        return cls(model, owner, os.getpid(), in_effect, lock, wraps)


class ModelProxy(_Base):
    """A model that is loaded lazily, once per process, and never reused across a fork.

    Create one with [`load_model`][forksafe.load_model] or
    [`lazy_model`][forksafe.lazy_model], not directly. Until first use it
    holds only its source. The first attribute access, call or method call
    loads the model in the current process (once, even when threads race);
    afterwards everything is forwarded to the model, and once loaded
    in-process, ``isinstance(proxy, keras.Model)`` is true (``type(proxy)``
    stays ``ModelProxy``: use ``isinstance``). In a fork child the parent's
    model is forgotten and loaded afresh on first use. A proxy pickles as its
    source, so a spawned worker receives a proxy that loads there; two
    unpickles of one source in a process share one model. Copies of a model
    loaded here keep its in-memory weights. Truth, hash and equality are the
    proxy's identity; they, ``repr()`` and [`info`][forksafe.info] never load.
    Shipping a proxy to Dask, Ray or Spark never loads it in the sender: in a
    process that has imported no framework, an unloaded proxy's class is
    ``ModelProxy``, dunder names it lacks are missing, and Dask's token is its
    source and options. Where the backend cannot take concurrent calls (Keras on JAX), calls
    through the proxy are serialized.
    """

    # Class-level defaults: reading proxy state never falls through to
    # ``__getattr__``, so it can never recurse or load.
    _self_held: Held | None = None
    _self_loading: int | None = None
    _self_token: str | None = None  # Dask's token, for a source that cannot be pickled

    def __init__(self, options: Options) -> None:
        # ``None`` with ``__wrapped_factory__`` defined keeps wrapt's C pointer
        # empty, so wrapt's own forwarding paths call ``__wrapped_get__``.
        super().__init__(None)
        self._self_options = options
        self._self_lock = threading.RLock()
        _forking.register(self)

    # -- loading ------------------------------------------------------------

    def __wrapped_factory__(self) -> Any:
        return self._self_resolve().model

    def __wrapped_get__(self) -> Any:
        return self._self_resolve().model

    def __wrapped_setattr_fixups__(self) -> None:
        # wrapt looks this hook up when ``__wrapped__`` is set; defining it
        # keeps that lookup away from ``__getattr__`` (which would load).
        return None

    def _self_resolve(self) -> Held:
        """What this process holds, loading the model if needed (the slow path)."""
        _forking.check_pid()
        options = self._self_options
        # Before the lock: a load may run on a thread of its own (see
        # _scopes), which would wait forever for the lock its caller holds.
        if self._self_loading == _scopes.caller_thread():
            raise ForkSafeError(
                f"the model {options.source.describe()!r} was used while it was being "
                "loaded, by the loader or factory itself; it must not use its own proxy"
            )
        with self._self_lock:
            held = self._self_held
            if held is not None:
                return held
            _forking.report_failures()
            in_effect = self._isolation_now()
            self._self_loading = threading.get_ident()
            try:
                if in_effect.hosted:
                    model, owner = self._self_remote(in_effect), None
                else:
                    model, owner = load_owned(options.source.load)
                    _runtime.note_loaded()
                    _churn.note_load(options.source.describe())
            finally:
                self._self_loading = None
            held = Held.of(model, owner, in_effect)
            # Published last: the lock-free fast path reads only this.
            self._self_held = held
            self.__wrapped__ = model
            return held

    def _self_remote(self, in_effect: Isolation) -> Any:
        """A stand-in for the model in a host: one of its own, or the user's shared one."""
        from forksafe._host.client import RemoteModel

        options = self._self_options
        source = options.source
        loader = functools.partial(load_owned, source.load)
        opener: Any
        if in_effect is Isolation.SHARED:
            from forksafe._host.client_shared import SharedHost

            batching = options.batching
            assert batching is not None  # made with the options of a shared proxy
            # The same in every process: source and batching (not the timeout).
            static = _key(Options(source, Isolation.SHARED, 0.0, batching))
            if static is None:
                raise HostError(f"a shared host needs a picklable source: {source.describe()}")
            opener = SharedHost(
                loader,
                static=static,
                paths=source.identity_paths(),
                describe=source.describe(),
                options={"max_batch": batching.max_batch, "max_wait_ms": batching.max_wait_ms},
            )
        else:
            from forksafe._host.client_private import TreeHost

            opener = TreeHost(loader, source.frameworks(), source.describe())
        return RemoteModel(opener, describe=source.describe(), timeout=options.timeout)

    def _isolation_now(self) -> Isolation:
        """Where the model must run here: ``INPROCESS``, ``PROCESS`` or ``SHARED``."""
        options = self._self_options
        if options.isolation.hosted:
            return options.isolation
        blocked = _runtime.inherited()
        if not blocked:
            return Isolation.INPROCESS
        what = options.source.describe()
        if options.isolation is Isolation.INPROCESS:
            raise InheritedRuntimeError(_runtime.explain_inherited(blocked, what=what))
        global _warned_pid
        if _warned_pid != os.getpid():
            _warned_pid = os.getpid()
            warn(_runtime.explain_hosted(blocked, what=what))
        return Isolation.PROCESS

    def _self_describe(self) -> str:
        return self._self_options.source.describe()

    def _self_after_fork(self, keep: list[Any]) -> None:
        """Fork-child hook: forget the parent's model; no framework code, no I/O."""
        held = self._self_held
        # wrapt's own setattr, skipping ours: this runs for every proxy in every fork.
        reset = _Base.__setattr__
        reset(self, "_self_held", None)
        reset(self, "_self_loading", None)
        reset(self, "_self_lock", threading.RLock())
        if held is not None:
            keep.append(held)
            # The methods kept in our own dict are the parent's model's.
            kept = self.__self_dict__
            for name in held.methods:
                kept.pop(name, None)

    # -- forwarding (the hot path) -----------------------------------------

    def __getattr__(self, name: str) -> Any:
        held = self._self_held
        if held is None:
            # A dunder name the proxy lacks is a protocol probe (``__dask_future__``,
            # ``__array_interface__`` ...), not a use: answered as a ModelProxy would.
            if name.startswith("_self_") or name[:2] == "__" == name[-2:]:
                raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
            held = self._self_resolve()
        value = getattr(held.model, name)
        # Methods follow the proxy across a fork; in graph mode every callable
        # needs the graph's re-entry, with a call lock its lock, and in a host
        # its connection must not be reused in a fork child.
        if type(value) is MethodType:
            func, instance = value.__func__, value.__self__
        elif held.wraps_callables and callable(value):
            func, instance = value, None
        else:
            return value
        # The one made for this name before, if it wraps the same method still:
        # building one costs more than the rest of an access together.
        made = held.methods.get(name)
        if made is not None and made[0] is func and made[1] is instance:
            method, kept = made[2], made[3]
        else:
            # A method of the model's class is kept in the proxy's own dict:
            # the next access finds it there, in C, instead of failing wrapt's
            # lookup and running this (microseconds a call, with the caches
            # as a prediction leaves them). See ``kept_method``.
            kept = instance is held.model and name not in getattr(instance, "__dict__", (name,))
            if kept:
                method = kept_method(self, name, held, func)
            else:
                method = ProxyMethod(value, self, name, held)
            held.methods[name] = (func, instance, method, kept)
        if kept:
            self.__self_dict__[name] = method
        return method

    def _self_forget(self, name: str, method: Any = None) -> None:
        """Drop the method kept for ``name`` (if it is still ``method``, when given)."""
        kept = self.__self_dict__
        if method is None or kept.get(name) is method:
            kept.pop(name, None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        held = self._self_held
        if held is None:
            held = self._self_resolve()
        owner = held.owner
        if owner is not None:
            return owner.call(held.model, *args, **kwargs)
        lock = held.call_lock
        if lock is None:
            return held.model(*args, **kwargs)
        with lock:
            return held.model(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_self_") or name == "__wrapped__":
            super().__setattr__(name, value)
        else:
            self._self_forget(name)
            setattr((self._self_held or self._self_resolve()).model, name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_self_"):
            super().__delattr__(name)
        else:
            self._self_forget(name)
            delattr((self._self_held or self._self_resolve()).model, name)

    # -- what never loads ---------------------------------------------------

    def __repr__(self) -> str:
        held = self._self_held
        state = f"loaded in pid {held.pid}" if held is not None else "not loaded in this process"
        options = self._self_options
        return (
            f"<forksafe.ModelProxy {options.source.describe()!r} "
            f"isolation={options.isolation.value!r}, {state}>"
        )

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> tuple[Callable[..., ModelProxy], tuple[Any, ...]]:
        # Ships the source and options, never the model: the receiver loads lazily.
        return _unpickled, (self._self_options,)

    def __reduce__(self) -> tuple[Callable[..., ModelProxy], tuple[Any, ...]]:
        return self.__reduce_ex__(2)

    def __copy__(self) -> ModelProxy:
        return self._self_copy(copy.copy)

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelProxy:
        return self._self_copy(lambda model: copy.deepcopy(model, memo))

    def _self_copy(self, how: Callable[[Any], Any]) -> ModelProxy:
        """A proxy of the same source holding ``how(model)``, as the model's own copies do.

        A model loaded here is copied with its weights as they are in memory
        (in its graph and session, in TF1 graph mode); an unloaded or hosted
        one gives an unloaded proxy that loads from the source.
        """
        clone = ModelProxy(self._self_options)
        held = self._self_held
        if held is None or held.in_effect is not Isolation.INPROCESS:
            return clone
        owner = held.owner
        copied = how(held.model) if owner is None else owner.call(how, held.model)
        clone._self_held = Held.of(copied, owner, Isolation.INPROCESS)
        clone.__wrapped__ = copied
        return clone

    # -- identity: answered by the proxy itself, never loads ----------------
    #
    # A Keras model's truth, hash and equality are its identity. The proxy
    # answers them by its own identity, so ``if MODEL:``, sets and dict keys
    # never load the model, and the answers stay the same before loading,
    # after it, and across the reload in a fork child.
    #
    # What engines ask of an object they ship is not a use either: its class
    # (cloudpickle, Dask and Ray call ``isinstance`` on everything), dunder
    # probes (in ``__getattr__``) and Dask's token. In a process that has
    # imported no framework (a driver, a Dask scheduler) an unloaded proxy's
    # class is ModelProxy; where one is imported, the class is a use and
    # loads, as Keras' own ``isinstance`` checks need.

    def __bool__(self) -> bool:
        return True

    @property
    def __class__(self) -> type:
        held = self._self_held
        if held is None:
            # Without a framework here, no class could be asked about that the
            # model would answer differently: engines' checks must not load it.
            if not _frameworks.imported():
                return ModelProxy
            held = self._self_resolve()
        if held.in_effect.hosted:  # the model's class lives in the host, not here
            return ModelProxy
        cls: type = held.model.__class__
        return cls

    @__class__.setter
    def __class__(self, value: type) -> None:
        (self._self_held or self._self_resolve()).model.__class__ = value

    def __dask_tokenize__(self) -> object:
        """Dask's token: what the proxy pickles as (source and options), loaded or not."""
        key = _key(self._self_options)
        if key is None:  # a source that cannot be pickled cannot travel: unique here
            if self._self_token is None:
                self._self_token = uuid.uuid4().hex
            return ("forksafe.ModelProxy", "unpicklable", self._self_token)
        return ("forksafe.ModelProxy", hashlib.sha256(key).hexdigest())

    def __hash__(self) -> int:
        return object.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return True if other is self else NotImplemented

    def __ne__(self, other: object) -> bool:
        return False if other is self else NotImplemented


# One proxy per source in each process for proxies that arrive pickled: a
# proxy passed as a task argument is unpickled once per task, and each copy
# would otherwise load the model again. Held for the life of the process, as
# a worker's module-level model would be.
_arrived: dict[bytes, ModelProxy] = {}


def _key(options: Options) -> bytes | None:
    """What a proxy with ``options`` pickles as, or ``None`` if its source cannot be pickled.

    A factory or loader defined in ``__main__`` or as a lambda reaches workers
    by value (cloudpickle) and pickle cannot name it there: the cloudpickle
    that brought it (Dask's, Ray's or Spark's copy) gives its key.
    """
    # Where each setting came from is not part of what the proxy is.
    state = (options.source, options.isolation.value, options.timeout, options.batching)
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    for name in ("cloudpickle", "ray.cloudpickle", "pyspark.cloudpickle"):
        module = sys.modules.get(name)
        if module is not None:
            try:
                key: bytes = module.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                return None
            return key
    return None


def _unpickled(options: Options) -> ModelProxy:
    """The proxy for ``options`` in this process: the one that arrived before, if alive."""
    key = _key(options)
    if key is None:  # it was just unpickled, so this is unexpected: do not share
        return ModelProxy(options)
    proxy = _arrived.get(key)
    if proxy is None:
        proxy = _arrived.setdefault(key, ModelProxy(options))
    return proxy
