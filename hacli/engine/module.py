"""PKCS#11 module instances, each with its own worker thread and command timeout.

Facts this module is built on (BRIEF section 4):

* SoftHSM2 turns its locking off under python-pkcs11, so every call into one
  loaded module must be serialised.  Here each :class:`ModuleInstance` owns one
  worker thread and *every* call into the module runs on it: serialisation
  without a lock that a stuck call could hold.
* A frozen member blocks a call forever.  The caller waits for its task with
  the command timeout, measured from the moment the task (or the task ahead of
  it) started running, so a queue behind a slow but working member is not
  mistaken for a hang.  On timeout the instance is *abandoned*: it never takes
  another task, the stuck thread stays blocked until the member resumes and
  then exits (unloading the module itself), and whoever needs the member again
  gets a brand-new instance (a fresh copy of the library file).
* ``pkcs11.lib(path)`` caches one instance per path and the loader returns one
  instance per file, so every instance here loads its own private copy of the
  library (never the cache), which also keeps the engine independent of other
  users of the same module in the process.
* ``p11-kit-client.so`` reads ``P11_KIT_SERVER_ADDRESS`` when loaded; SoftHSM2
  reads ``SOFTHSM2_CONF`` in ``C_Initialize``.  The member's environment is put
  in ``os.environ`` around both, under :data:`ENV_GATE`, a process-wide lock
  with a *lease*: a holder blocked inside ``C_Initialize`` (a frozen p11-kit
  server) is overtaken after :data:`ENV_LEASE` seconds, long after the module
  has read its variables, so one frozen member cannot stall the others.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import pkcs11
from pkcs11 import _pkcs11

from hacli.engine.exceptions import CallTimeout, ModuleUnavailable

T = TypeVar("T")

#: Seconds an environment window may be held before another loader overtakes it.
ENV_LEASE = 0.5


class _EnvGate:
    """Process-wide gate for temporary ``os.environ`` changes (see module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: _EnvLease | None = None

    def enter(self, env: Mapping[str, str], lease: float = ENV_LEASE) -> _EnvLease:
        with self._cond:
            while self._holder is not None:
                wait = self._holder.deadline - time.monotonic()
                if wait <= 0:
                    self._holder._restore_locked()
                    self._holder = None
                    break
                self._cond.wait(wait)
            token = _EnvLease(self, env, time.monotonic() + lease)
            self._holder = token
            return token

    def _exit(self, token: _EnvLease) -> None:
        with self._cond:
            if self._holder is token:
                token._restore_locked()
                self._holder = None
                self._cond.notify_all()


class _EnvLease:
    def __init__(self, gate: _EnvGate, env: Mapping[str, str], deadline: float):
        self.gate = gate
        self.deadline = deadline
        self._saved = {k: os.environ.get(k) for k in env}
        self._restored = False
        os.environ.update(env)

    def _restore_locked(self) -> None:
        if self._restored:
            return
        self._restored = True
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __enter__(self) -> _EnvLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate._exit(self)


ENV_GATE = _EnvGate()

# Instances whose worker is stuck inside the module: referenced here so the
# module is never unloaded (dlclose) under a thread still running in it.
_GRAVEYARD: set[ModuleInstance] = set()
_GRAVEYARD_LOCK = threading.Lock()


class _Task:
    __slots__ = ("args", "fn", "future", "started")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()
        self.started: float | None = None


_STOP = object()


class ModuleInstance:
    """One loaded copy of a PKCS#11 module, driven by one worker thread.

    :param library: path of the module (``.so``).
    :param env: environment the module needs while loading/initialising.
    :param workdir: private directory for the library copy.
    :param name: for thread names and messages (member serial(s)).
    """

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, library: str, env: Mapping[str, str] | None, workdir: str,
                 name: str = ""):
        self.library = library
        self.env = dict(env or {})
        self.workdir = workdir
        self.name = name
        with ModuleInstance._counter_lock:
            ModuleInstance._counter += 1
            self.number = ModuleInstance._counter
        self.copy_path: str | None = None
        self.lib: Any = None
        #: Incremented at every (re)initialisation: sessions of an older
        #: generation are invalid.
        self.generation = 0
        self.abandoned = False
        self.closed = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._running: _Task | None = None
        self._state_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._work, name=f"hacli-module-{self.number}-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "abandoned" if self.abandoned else "closed" if self.closed else "ok"
        return f"<ModuleInstance #{self.number} {self.library} {state}>"

    @property
    def usable(self) -> bool:
        """False once abandoned (stuck) or closed: get a new instance instead."""
        return not (self.abandoned or self.closed)

    # -- worker -----------------------------------------------------------
    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is _STOP:
                break
            with self._state_lock:
                if self.abandoned:
                    task.future.set_exception(ModuleUnavailable(self.name))
                    continue
                task.started = time.monotonic()
                self._running = task
            if not task.future.set_running_or_notify_cancel():
                continue
            try:
                result = task.fn(*task.args)
            except BaseException as e:
                task.future.set_exception(e)
            else:
                task.future.set_result(result)
            with self._state_lock:
                self._running = None
                if self.abandoned:
                    break
        # Leaving: if we were abandoned, the stuck call has returned; the module
        # can now be unloaded safely from this (its only) thread.
        if self.abandoned:
            self._drain(ModuleUnavailable(self.name))
            self._unload()
            with _GRAVEYARD_LOCK:
                _GRAVEYARD.discard(self)

    def _drain(self, exc: BaseException) -> None:
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                return
            if task is not _STOP and not task.future.done():
                task.future.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float,
             operation: str = "") -> T:
        """Run ``fn(*args)`` on the worker; wait at most ``timeout`` s of its run.

        Raises :class:`CallTimeout` (and abandons the instance) when the running
        call exceeds the timeout, :class:`ModuleUnavailable` when the instance
        is already abandoned or closed, else whatever ``fn`` raised.
        """
        if not self.usable:
            raise ModuleUnavailable(self.name)
        task = _Task(fn, args)
        self._queue.put(task)
        fut = task.future
        while True:
            with self._state_lock:
                running = self._running
                started = running.started if running is not None else None
            if started is None:
                wait = timeout
            else:
                wait = max(0.0, started + timeout - time.monotonic()) + 0.001
            try:
                return fut.result(timeout=wait)
            except TimeoutError:
                pass
            with self._state_lock:
                running = self._running
                hung = (running is not None and running.started is not None
                        and time.monotonic() - running.started >= timeout)
                if self.abandoned:
                    hung = True
                if hung and not self.abandoned:
                    self._abandon_locked()
            if hung:
                if fut.done():  # finished in the meantime after all
                    return fut.result()
                raise CallTimeout(operation, self.name, timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any] | None:
        """Queue ``fn(*args)`` on the worker without waiting (clean-up work).

        Returns the future, or None when the instance is abandoned or closed
        (the task would never run).  Nobody bounds it: use it only for work
        that must run in order with the calls already queued, e.g. ending a
        multi-part operation on a member that was just marked down.
        """
        if not self.usable:
            return None
        task = _Task(fn, args)
        self._queue.put(task)
        return task.future

    def _abandon_locked(self) -> None:
        self.abandoned = True
        with _GRAVEYARD_LOCK:
            _GRAVEYARD.add(self)
        self._drain(ModuleUnavailable(self.name, "module instance abandoned after a timeout"))

    # -- module lifecycle (these run on the worker) ------------------------
    def _load(self) -> Any:
        if self.lib is not None:
            return self.lib
        base = os.path.basename(self.library)
        self.copy_path = os.path.join(self.workdir, f"m{self.number}-{base}")
        shutil.copy2(self.library, self.copy_path)
        # Split python-pkcs11's lib construction: __cinit__ (dlopen +
        # C_GetFunctionList, where p11-kit-client reads its address) and
        # __init__ (C_Initialize + C_GetInfo, where SoftHSM2 reads its conf)
        # both under the environment lease; bypasses pkcs11.lib's path cache.
        with ENV_GATE.enter(self.env):
            lib = _pkcs11.lib.__new__(_pkcs11.lib, self.copy_path)
            lib.__init__(self.copy_path)
        self.lib = lib
        self.generation += 1
        return lib

    def _reinitialize(self) -> Any:
        if self.lib is None:
            return self._load()
        # a dead connection may refuse C_Finalize; we initialise anew anyway
        with contextlib.suppress(pkcs11.PKCS11Error):
            self.lib.finalize()
        with ENV_GATE.enter(self.env):
            self.lib.initialize()
        self.generation += 1
        return self.lib

    def _unload(self) -> None:
        lib, self.lib = self.lib, None
        if lib is not None:
            with contextlib.suppress(Exception):
                lib.unload()
        if self.copy_path:
            with contextlib.suppress(OSError):
                os.unlink(self.copy_path)

    def load(self, timeout: float) -> Any:
        """Load (once) and initialise the module; returns the python-pkcs11 lib."""
        return self.call(self._load, timeout=timeout, operation="C_Initialize")

    def reinitialize(self, timeout: float) -> Any:
        """``C_Finalize`` + ``C_Initialize``: every session of the instance is gone."""
        return self.call(self._reinitialize, timeout=timeout, operation="C_Initialize")

    def close(self, timeout: float = 2.0) -> None:
        """Finalize and unload (on the worker) and stop the worker thread.

        An abandoned instance is left to its stuck thread, which unloads it
        when (if ever) the call returns; its library copy is unlinked now.
        """
        if self.closed:
            return
        if self.abandoned:
            self.closed = True
            if self.copy_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.copy_path)
            return
        with contextlib.suppress(Exception):
            self.call(self._unload, timeout=timeout, operation="C_Finalize")
        self.closed = True
        self._queue.put(_STOP)
        if not self.abandoned:
            self._thread.join(timeout)


def module_key(library: str,
               env: Mapping[str, str] | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Members with equal keys share one module instance."""
    return (os.path.realpath(library), tuple(sorted((env or {}).items())))




class InstanceRegistry:
    """The module instances of an engine: one current instance per module key.

    Members with equal ``(library, env)`` share the current instance; when it
    is abandoned (a stuck call) the next :meth:`current` makes a fresh one.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._lock = threading.Lock()
        self._current: dict[Any, ModuleInstance] = {}
        self._all: list[ModuleInstance] = []

    def current(self, library: str, env: Mapping[str, str] | None,
                name: str = "") -> ModuleInstance:
        key = module_key(library, env)
        with self._lock:
            inst = self._current.get(key)
            if inst is None or not inst.usable:
                inst = ModuleInstance(library, env, self.workdir, name)
                self._current[key] = inst
                self._all.append(inst)
            return inst

    def instances(self) -> list[ModuleInstance]:
        with self._lock:
            return list(self._all)

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            instances, self._all, self._current = self._all, [], {}
        threads = [threading.Thread(target=i.close, args=(timeout,), daemon=True)
                   for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 1.0)


__all__ = ["ENV_GATE", "ENV_LEASE", "InstanceRegistry", "ModuleInstance", "module_key"]
