"""Modules that gRPC and protobuf import for what zc-ctl never uses, run only when something does use them.

``import grpc`` runs ``grpc.aio`` (its package ends with ``from grpc import aio``), and gRPC's Cython core runs
``import asyncio``: ~15 ms of a ~98 ms 1-file ``zc-ctl replicate`` (CPU, median of 15 interleaved runs), for
names the synchronous channel never reads. protobuf's descriptor pool imports its pure-Python message
implementation (``python_message``, with text_format, the decoders and containers: ~3 ms) even when messages
are built by the upb extension, which never reads it. :func:`defer_unused` puts these in ``sys.modules`` as
placeholders before gRPC and protobuf load: an ``import`` of one finds the placeholder and returns at once, and
the first read of a name the module has not defined yet runs the real module inside that same module object (so
every reference handed out stays valid). Behaviour is the one of an ordinary import, only later: a caller that
uses asyncio, ``grpc.aio`` or the pure-Python protobuf gets the whole module at its first attribute.

Why not ``importlib.util.LazyLoader``: its modules load on any attribute read, ``__spec__`` included, and an
``import`` statement reads ``__spec__`` of a module already in ``sys.modules`` (CPython's
``import_ensure_initialized``), so gRPC's own ``import asyncio`` would load it at once.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from importlib.machinery import ModuleSpec, PathFinder
from typing import Any

# One for all placeholders: a module's code may read another placeholder while it runs (grpc.aio reads asyncio).
_LOADING = threading.RLock()


class _Placeholder(types.ModuleType):
    """A module whose code has not run yet; the first read of a name it lacks runs it, under ``_LOADING``.

    Names the import system sets (``__spec__``, ``__path__``, ``__loader__``, submodules bound by their own
    import) are plain entries of the module's dict and never trigger it. While the code runs, reads of names it
    has not defined yet fail as they would in a module being imported (``from . import x`` then takes the
    submodule from ``sys.modules``); other threads wait for the end, as they would for an import."""

    def __getattr__(self, name: str) -> Any:
        with _LOADING:
            if type(self) is _Placeholder and "_zc_running" not in self.__dict__:
                self.__dict__["_zc_running"] = True
                try:
                    _run(self)
                finally:  # after a failure, a later read tries again, as a new import would
                    del self.__dict__["_zc_running"]
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _run(module: types.ModuleType) -> None:
    spec = module.__spec__
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(module)
    module.__class__ = types.ModuleType


def defer_unused() -> None:
    """Before the first ``import grpc``: asyncio and ``grpc.aio``, and protobuf's pure-Python messages where the
    upb extension builds them, load when first used. A module already loaded (a test process, a daemon, ``zc-ctl
    demo``), or whose package is not found, is left as it is."""
    if not {"grpc", "asyncio", "grpc.aio"} & sys.modules.keys():
        grpc_spec = importlib.util.find_spec("grpc")  # a top-level name: nothing is imported to find it
        if grpc_spec is not None and grpc_spec.submodule_search_locations:
            _defer(importlib.util.find_spec("asyncio"),
                   PathFinder.find_spec("grpc.aio", list(grpc_spec.submodule_search_locations)))
    if importlib.util.find_spec("google.protobuf") is not None:
        from google.protobuf.internal import api_implementation  # descriptor.py imports it first thing anyway

        if api_implementation.Type() != "python":
            _defer(importlib.util.find_spec("google.protobuf.internal.python_message"))


def _defer(*specs: ModuleSpec | None) -> None:
    """Placeholders for all of ``specs``, or (one of them not found) for none."""
    if any(spec is None or spec.loader is None or spec.name in sys.modules for spec in specs):
        return
    for spec in specs:
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Placeholder
        sys.modules[spec.name] = module


def is_placeholder(module: types.ModuleType) -> bool:
    """True while ``module``'s code has not run (tests and the start-up benchmark read it)."""
    return type(module) is _Placeholder
