"""Out of process: a host process runs a model for a client that cannot run it itself.

``client`` is the door (``RemoteModel``), used by ``forksafe._proxy`` only;
``template`` is the process that forks hosts; ``server`` is a host's loop;
``wire`` holds what both sides agree on (credentials, handshake, frames,
deadlines, the decode boundary) and ``transport`` the shared-memory arrays.
Nothing here imports anything from forksafe but ``_errors``, ``_frameworks``
and ``_forking``; nothing is imported until a host is needed.
"""
