"""Beyond one machine: data-parallel gradients, training and ensembles on Dask.

diffprog does not bring its own cluster engine: it runs on Dask's ``distributed``
scheduler, which starts on a laptop (``Client()`` makes a LocalCluster), on HPC through
dask-jobqueue and in the cloud. Install it with ``pip install "diffprog[distributed]"``.
The examples in this module are skipped by doctest because they need a running
cluster; tests/test_distributed.py makes the same calls on a LocalCluster.

>>> from dask.distributed import Client  # doctest: +SKIP
>>> import diffprog.distributed as dpd  # doctest: +SKIP
>>> client = Client()  # doctest: +SKIP
>>> shards = dpd.shard([(x[i::64], y[i::64]) for i in range(64)], client)  # doctest: +SKIP
>>> g = dpd.grad(loss, client=client)(params, shards)  # doctest: +SKIP
>>> res = dpd.map(solve, P, client=client, chunk=100)  # doctest: +SKIP

How a gradient step runs (docs/distributed.md has the measured costs):

* Shards stay on the workers. :func:`shard` sends NumPy shards once, in contiguous
  blocks, one block per worker (neighbouring shards are summed first, without a
  transfer); Dask arrays are computed and kept where Dask puts them; futures are used
  as they are.
* Each step sends ``(params, args)`` from the client once; every worker that runs a
  task of the step fetches one copy from a worker that has it. Then a fixed binary
  tree over the shard indices runs: leaf tasks compute ``value_and_grad`` of a
  contiguous range of shards on the worker holding them, combine tasks add two partial
  sums. The tree depends only on the number of shards, never on which worker ran
  what, so the sum has the same bits whatever the cluster did (a worker killed
  mid-step included). Every partial sum carries the indices of its shards, and the
  root is checked to hold each shard exactly once.
* The user's function travels as Dask serialises it (cloudpickle), once per gradient
  function or :func:`fit`, under a key made from its pickled bytes. Each worker keeps
  the compiled program of that key (:func:`_worker_program`), so it traces and
  compiles once per signature, not once per task.

Faults: a worker that dies is replaced by its Nanny and Dask reruns its tasks. Data the
client sent has no recipe Dask could rerun, so the client keeps a reference to the
arrays you passed (no copy), sends a lost shard (or the step's parameters) again and
reruns the step (:meth:`Shards.restore`). A shard whose loss raises is reported as a
:class:`RemoteError` naming the shard and the worker.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ArgumentError, ArgumentValueError, DiffprogError, EngineError, \
    EngineUnavailable, ShapeError
from .tree import TreeDef, flatten, unflatten

INSTALL = 'pip install "diffprog[distributed]"   (or: pip install "dask[distributed]")'


class DaskUnavailable(EngineUnavailable, ImportError):
    """Dask's distributed scheduler is not installed. Also an ``ImportError``, so the usual
    ``try: import ... except ImportError`` around optional modules keeps working."""


try:
    import cloudpickle
    import distributed
    from distributed import Future
    from distributed.client import FutureCancelledError
except ImportError as _missing:  # the optional extra is not installed
    raise DaskUnavailable(
        f"diffprog.distributed runs on Dask's distributed scheduler, which is not installed "
        f"here ({_missing}). Fix: {INSTALL}") from None

def _isolate_dask_sampling() -> None:
    """Give Dask's sampling its own random generator, in this process (client or worker).

    Dask draws from Python's global ``random`` on its own threads: ``dask.sizeof`` samples
    list items several times a second on an idle worker, and message compression samples
    bytes. diffprog notices random draws in a traced function by comparing the global
    generators' states before and after the trace (diffprog/randomness.py), so a draw
    Dask makes meanwhile on another thread was blamed on the function: a compiled program
    retraced at every call, a ``dp.vmap`` refused with "random numbers are drawn inside
    the function". Dask only picks samples with these draws, so a private generator
    changes nothing for it; the user's own ``random`` calls still move the watched one."""
    import random
    import dask.sizeof
    from distributed.protocol import compression
    own = random.Random()
    if getattr(dask.sizeof, "random", None) is random:
        dask.sizeof.random = own
    if getattr(compression, "randint", None) == random.randint:
        compression.randint = own.randint


_isolate_dask_sampling()

__all__ = ["grad", "value_and_grad", "fit", "map", "shard", "Shards", "RemoteError",
           "worker_programs"]

#: how many times one step is rerun after its data was lost with a worker
MAX_STEP_RESTARTS = 3
#: seconds to wait for the client to hear which data a dead worker took with it
LOST_DATA_WAIT_S = 5.0
#: leaf tasks per worker thread in a step's reduction tree (more balance, more tasks)
LEAF_TASKS_PER_THREAD = 2


class RemoteError(DiffprogError, RuntimeError):
    """A shard or ensemble member raised on a worker. ``where`` names it (``"shard 7"``),
    ``worker`` is the worker's address, ``original_type`` the exception's class name,
    ``original`` the exception itself where it could travel back, ``remote_traceback``
    the worker's traceback as text."""

    def __init__(self, message: str, where: str = "", worker: str = "",
                 original_type: str = "", remote_traceback: str = "", original=None):
        super().__init__(message)
        self.where, self.worker = where, worker
        self.original_type, self.remote_traceback = original_type, remote_traceback
        self.original = original
        self.__cause__ = original  # shown under the error, as if raised here

    def __reduce__(self):  # travels from the worker to the client by pickle
        return (type(self), (self.args[0], self.where, self.worker, self.original_type,
                             self.remote_traceback, self.original))

    @classmethod
    def of(cls, error: BaseException, where: str, reproduce: str) -> "RemoteError":
        worker = _worker_address()
        message = (f"{where} raised {type(error).__name__} on worker {worker}: {error}\n"
                   f"Reproduce it on the client: {reproduce}")
        return cls(message, where, worker, type(error).__name__,
                   "".join(traceback.format_exception(error)), _if_picklable(error))


def _if_picklable(error: BaseException):
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # an exception that cannot travel is described by its text only
        return None
    return error


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:  # not inside a worker (a task run in the client's process)
        return "(not a Dask worker)"


# ============================================================ client and function keys

def _client(client):
    """The client given, or the current default one (Dask's convention)."""
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise ArgumentError(f"diffprog.distributed: client must be a dask.distributed.Client, "
                                f"got {type(client).__name__}. Fix: client=Client() (a local "
                                f"cluster) or Client('tcp://scheduler:8786').")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ArgumentError("diffprog.distributed: no Dask client. Fix: from dask.distributed "
                            "import Client; client = Client() (starts a local cluster) or "
                            "Client('tcp://scheduler:8786'), then pass client=client.") from None


def _threads(client) -> int:
    return max(1, sum(client.nthreads().values()))


def _function_token(fn, kind: str, engine, fast_math: bool = False) -> str:
    """A name for ``fn`` made from its pickled bytes: the same function sent twice gets the
    same name, so workers find the program they compiled for it (never keyed by id())."""
    digest = hashlib.sha256(cloudpickle.dumps((fn, kind, engine, fast_math))).hexdigest()[:24]
    return f"diffprog-fn-{digest}"


def _send(client, data, name: str) -> Future:
    """``data`` on the cluster, sent once by the client; each worker whose tasks need it
    fetches one copy from a worker that has it (Dask's peer-to-peer transfers).

    Not ``scatter(broadcast=True)``: its replication loop can retry a worker that died
    meanwhile forever (dask/distributed#5704); a fault test hung on it. The key is
    ``name`` plus a fresh suffix, never a key sent before: the release of an earlier
    future of that key can reach the scheduler after the new data and drop it (seen as
    'lost dependencies' on an in-process cluster)."""
    key = f"{name}-{uuid.uuid4().hex[:12]}"
    return _scatter(client, {key: data})[key]


def _scatter(client, data, **where):
    """``client.scatter(data, hash=False)``, retried: a worker dying while data is sent
    can fail the call (a closed connection, a KeyError naming the dead worker), and
    sending again has no side effects."""
    for attempt in range(MAX_STEP_RESTARTS + 1):
        try:
            return client.scatter(data, hash=False, **where)
        except (pickle.PicklingError, TypeError, AttributeError):
            raise  # the data cannot be pickled at all: no retry helps
        except Exception:
            if attempt == MAX_STEP_RESTARTS:
                raise
            time.sleep(0.1 * (attempt + 1))


def _plain(fn):
    """The user's function, engine and fast-math mode, unwrapped from ``dp.differentiable``
    (whose program cache belongs to this process and is not sent to the workers). The
    mode is the function's own choice, else this process's :func:`diffprog.set_fast_math`
    setting now: the workers compile with it, whatever their own setting."""
    from .api import Differentiable, _FAST_MATH
    if isinstance(fn, Differentiable):
        return fn.fn, fn.engine, fn.fast_math_now()
    if not callable(fn):
        raise ArgumentError(f"diffprog.distributed: expected a function, got {type(fn).__name__}. "
                            f"Fix: pass the function itself, e.g. loss(params, shard, *args).")
    return fn, None, _FAST_MATH[0]


# ===================================================================== worker side

# Programs compiled in this worker process, by function key: a task that names a function
# the worker has seen reuses its compiled program (and the signature cache inside it).
_PROGRAMS: "OrderedDict[tuple, Callable]" = OrderedDict()
_PROGRAMS_LOCK = threading.Lock()
_MAX_PROGRAMS = 64


def _worker_program(token: str, fn, kind: str, engine, fast_math: bool = False):
    """The transformed ``fn`` this worker keeps for ``token`` (built on first use)."""
    with _PROGRAMS_LOCK:
        hit = _PROGRAMS.get(token)
        if hit is not None:
            _PROGRAMS.move_to_end(token)
            return hit
    from . import api
    if kind == "plain":
        built = fn
    elif kind == "value":
        built = api.differentiable(fn, engine=engine, fast_math=fast_math)
    elif kind == "batched":
        built = api.vmap(api.differentiable(fn, engine=engine, fast_math=fast_math))
    else:
        built = api.value_and_grad(api.differentiable(fn, engine=engine, fast_math=fast_math))
    with _PROGRAMS_LOCK:
        built = _PROGRAMS.setdefault(token, built)
        while len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    return built


def worker_programs() -> list[str]:
    """Keys of the programs this process keeps (run it on the workers with
    ``client.run(dpd.worker_programs)``); one per function, however many tasks ran.

    >>> client.run(dpd.worker_programs)  # doctest: +SKIP
    {'tcp://127.0.0.1:40013': ['diffprog-fn-3f1c...'], 'tcp://127.0.0.1:40127': [...]}
    """
    with _PROGRAMS_LOCK:
        return list(_PROGRAMS)


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _to_host(x):
    """A CuPy result as a NumPy array (partial sums travel and add on the host)."""
    return x.get() if _is_cupy(x) else x


def _params_on_device_of(shard_leaves, params):
    """Parameters on the GPU of the shard's CuPy arrays (the inputs decide the engine:
    CuPy shards run on the cupy engine), once per task; unchanged for NumPy shards."""
    on_gpu = [leaf for leaf in shard_leaves if _is_cupy(leaf)]
    if not on_gpu:
        return params
    import cupy
    leaves, treedef = flatten(params)
    with on_gpu[0].device:
        moved = [cupy.asarray(p) if isinstance(p, np.ndarray) else p for p in leaves]
    return unflatten(treedef, moved)


@dataclass
class Partial:
    """The sum of the values and gradients of some shards, and which shards they were."""

    shards: tuple
    value: Any
    grads: list
    treedef: TreeDef


def _combine(a: Partial, b: Partial) -> Partial:
    """a + b (new arrays: Dask may hand the same inputs to a rerun task)."""
    if a.treedef != b.treedef:
        raise ShapeError(f"diffprog.distributed: gradients of shards {a.shards[:3]} and "
                         f"{b.shards[:3]} have different structures ({a.treedef} vs "
                         f"{b.treedef}); every shard must be differentiated at the same params.")
    return Partial(a.shards + b.shards, a.value + b.value,
                   [x + y for x, y in zip(a.grads, b.grads)], a.treedef)


def _midpoint(lo: int, hi: int) -> int:
    """Where the reduction tree splits [lo, hi): the one rule used by the client's task
    tree and by the sums inside a task, so every split gives the same bits."""
    return (lo + hi) // 2


def _pairwise(lo: int, hi: int, leaf: Callable[[int], Partial]) -> Partial:
    if hi - lo == 1:
        return leaf(lo)
    mid = _midpoint(lo, hi)
    return _combine(_pairwise(lo, mid, leaf), _pairwise(mid, hi, leaf))


def _shard_range_task(token, fn, engine, broadcast, lo, hi, shard_leaves, treedefs,
                      fast_math=False) -> Partial:
    """Leaf task: value and gradient of shards lo..hi-1 (on the worker holding them),
    summed in the tree's order."""
    params, args = broadcast
    value_and_grad = _worker_program(token, fn, "value_and_grad", engine, fast_math)
    params = _params_on_device_of([x for leaves in shard_leaves for x in leaves], params)

    def one_shard(i: int) -> Partial:
        shard = unflatten(treedefs[i - lo], shard_leaves[i - lo])
        try:
            value, grads = value_and_grad(params, shard, *args)
        except Exception as e:
            raise RemoteError.of(e, f"shard {i}",
                                 f"loss(params, shards.fetch({i}), *args)") from e
        leaves, treedef = flatten(grads)
        return Partial((i,), _to_host(value), [_to_host(g) for g in leaves], treedef)

    return _pairwise(lo, hi, one_shard)


# ========================================================================= shards

class Shards:
    """Data split in shards that live on the workers of one client, made by :func:`shard`.

    ``len(shards)`` is the number of shards; ``shards.fetch(i)`` brings shard ``i`` back
    to the client (to debug a shard that raised). Pass it to :func:`grad`,
    :func:`value_and_grad` or :func:`fit` as often as you like: nothing is sent again.
    """

    def __init__(self, client, futures: list, treedefs: list, sources: list):
        self.client = client
        self.futures = futures      # per shard: the futures of its leaves
        self.treedefs = treedefs    # per shard: its structure
        self.sources = sources      # per shard: the client's leaves (to resend), or None
        self.digests = [None if leaves is None else _digest(leaves) for leaves in sources]

    def __len__(self) -> int:
        return len(self.futures)

    def __repr__(self) -> str:
        return f"<Shards: {len(self)} shards on {len(self.client.nthreads())} workers>"

    def fetch(self, i: int):
        """Shard ``i`` as it is on the workers (a copy on the client)."""
        return unflatten(self.treedefs[i], self.client.gather(self.futures[i]))

    def lost(self) -> list[int]:
        """Shards whose data is no longer on any worker (the worker holding it died)."""
        return [i for i, leaves in enumerate(self.futures)
                if any(f.status not in ("pending", "finished") for f in leaves)]

    def restore(self) -> list[int]:
        """Send lost shards again from the client's references; returns their indices.
        Shards that came as your own futures cannot be resent: that is an error naming
        them and the fix."""
        lost = self.lost()
        without_source = [i for i in lost if self.sources[i] is None]
        if without_source:
            raise EngineError(
                f"diffprog.distributed: the data of shards {without_source} was lost with a "
                f"worker, and diffprog has no copy: they were passed as futures. Fix: pass "
                f"the arrays (the client keeps a reference and resends lost shards), a Dask "
                f"array (Dask recomputes lost blocks), or client.replicate(futures, n=2).")
        changed = [i for i in lost if _digest(self.sources[i]) != self.digests[i]]
        if changed:  # resending them would mix two versions of the data in one sum
            raise EngineError(
                f"diffprog.distributed: the data of shards {changed} was lost with a worker, "
                f"and your arrays of those shards have changed on the client since they were "
                f"sent (modified in place), so they cannot be resent as they were. Fix: do not "
                f"modify arrays you passed to dpd.shard/fit while they are in use, or pass "
                f"copies.")
        for i in lost:
            self.futures[i] = _scatter(self.client, list(self.sources[i]))
        return lost

    def release(self) -> None:
        """Drop the shards from the workers."""
        for leaves in self.futures:
            for f in leaves:
                f.release()
        self.futures = [[] for _ in self.futures]


def _digest(leaves: list) -> str:
    """A fingerprint of a shard's values on the client (to refuse resending changed data)."""
    h = hashlib.blake2b(digest_size=16)
    for leaf in leaves:
        if isinstance(leaf, np.ndarray) and not leaf.dtype.hasobject:
            h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
            h.update(np.ascontiguousarray(leaf).view(np.uint8).reshape(-1) if leaf.size else b"")
        else:
            h.update(pickle.dumps(leaf))
    return h.hexdigest()


def shard(data, client=None) -> Shards:
    """Put ``data`` on the workers once and return the :class:`Shards` handle.

    ``data`` is one of

    * a list of shards, each an array or a nested tuple/list/dict of arrays (``(x, y)``),
      sent in contiguous blocks, one block per worker; the client keeps a reference to
      your arrays (no copy) and a fingerprint of them, to resend a shard lost with a
      worker (if you modified those arrays in place since, that is an error instead);
    * a Dask array, or a tuple/list/dict of Dask arrays with the same chunks along
      axis 0: shard ``i`` is block ``i`` along axis 0 of each (other axes are joined into
      one chunk), computed and kept on the workers, recomputed by Dask if lost;
    * a list of futures (or of tuples/dicts of futures) already on the workers.

    >>> shards = dpd.shard([(x[i::64], y[i::64]) for i in range(64)], client)  # doctest: +SKIP
    >>> len(shards)  # doctest: +SKIP
    64
    """
    client = _client(client)
    if isinstance(data, Shards):
        if data.client is not client:
            raise ArgumentError("diffprog.distributed: these Shards belong to another client. "
                                "Fix: shard the data again with this client.")
        return data
    dask_leaves, treedef = flatten(data)
    if dask_leaves and all(_is_dask_array(x) for x in dask_leaves):
        return _shard_dask_arrays(client, dask_leaves, treedef)
    if not isinstance(data, list):  # a tuple could be one shard (x, y) or several: refused
        raise ArgumentError(
            f"diffprog.distributed: shards must be a list of shards, a Dask array or a list of "
            f"futures, got {type(data).__name__}. Fix: split the data yourself into a list, "
            f"e.g. [(x[i::64], y[i::64]) for i in range(64)], or pass "
            f"dask.array.from_array(x, chunks=...).")
    if len(data) == 0:
        raise ArgumentValueError("diffprog.distributed: shards is an empty list; pass at least "
                                 "one shard.")
    per_shard = [flatten(s) for s in data]
    futures: list = [None] * len(data)
    sources: list = [None] * len(data)
    to_send = []
    for i, (leaves, _) in enumerate(per_shard):
        kinds = {isinstance(x, Future) for x in leaves}
        if kinds == {True, False}:
            raise ArgumentError(f"diffprog.distributed: shard {i} mixes futures and local "
                                f"values. Fix: make every part of a shard a future, or none.")
        if True in kinds:
            futures[i] = list(leaves)
        else:
            sources[i] = leaves
            to_send.append(i)
    _send_in_blocks(client, to_send, sources, futures)
    return Shards(client, futures, [td for _, td in per_shard], sources)


def _send_in_blocks(client, indices: list, sources: list, futures: list) -> None:
    """Scatter shards in contiguous blocks, one block per worker: the reduction tree adds
    neighbouring shards first, and neighbours on one worker need no transfer."""
    workers = sorted(client.nthreads())
    if not indices:
        return
    if not workers:
        raise EngineError("diffprog.distributed: the cluster has no workers. Fix: start some "
                          "(cluster.scale(2)) or wait for them (client.wait_for_workers(2)).")
    per_worker = math.ceil(len(indices) / len(workers))
    for w, start in zip(workers, range(0, len(indices), per_worker)):
        block = indices[start:start + per_worker]
        flat = [x for i in block for x in sources[i]]
        sent = iter(_scatter(client, flat, workers=[w]))
        for i in block:
            futures[i] = [next(sent) for _ in sources[i]]


def _is_dask_array(x) -> bool:
    return type(x).__module__.startswith("dask.array") and hasattr(x, "to_delayed")


def _shard_dask_arrays(client, arrays: list, treedef: TreeDef) -> Shards:
    first = arrays[0].chunks[0]
    for a in arrays[1:]:
        if a.chunks[0] != first:
            raise ShapeError(f"diffprog.distributed: Dask arrays of one shard must have the "
                             f"same chunks along axis 0, got {first} and {a.chunks[0]}. "
                             f"Fix: .rechunk({{0: {first}}}) the others.")
    blocks = []
    for a in arrays:
        whole_rows = a.rechunk({axis: -1 for axis in range(1, a.ndim)})  # one block per shard
        blocks.append(client.compute(list(whole_rows.to_delayed().ravel())))
    futures = [[leaf_blocks[i] for leaf_blocks in blocks] for i in range(len(first))]
    return Shards(client, futures, [treedef] * len(first), [None] * len(first))


# ================================================================== gradient steps

class DistributedValueAndGrad:
    """``(value, gradient)`` of ``fn(params, shard, *args)`` summed (or averaged) over
    shards; made by :func:`value_and_grad`. The gradient is w.r.t. ``params``."""

    def __init__(self, fn, client=None, reduce: str = "sum", engine: str | None = None,
                 leaf_tasks: int | None = None):
        if reduce not in ("sum", "mean"):
            raise ArgumentValueError(f"diffprog.distributed: reduce must be 'sum' or 'mean', "
                                     f"got {reduce!r}.")
        if leaf_tasks is not None and (not isinstance(leaf_tasks, int) or leaf_tasks < 1):
            raise ArgumentValueError(f"diffprog.distributed: leaf_tasks must be a positive "
                                     f"int or None, got {leaf_tasks!r}.")
        self.fn, own_engine, self.fast_math = _plain(fn)
        self.engine = engine or own_engine
        self.client = _client(client)
        self.reduce, self.leaf_tasks = reduce, leaf_tasks
        self.token = _function_token(self.fn, "value_and_grad", self.engine, self.fast_math)
        self._fn_future = None
        self._params_future = None  # this step's parameters (to tell whether they were lost)

    def __call__(self, params, shards, *args):
        owned = not isinstance(shards, Shards)
        shards = shard(shards, self.client)
        try:
            return self._step(params, shards, args)
        finally:
            if owned:  # sent for this call only; pass dpd.shard(...) to keep data there
                shards.release()

    def _function_future(self) -> Future:
        if self._fn_future is None or self._fn_future.status != "finished":
            self._fn_future = _send(self.client, self.fn, self.token)
        return self._fn_future

    def _step(self, params, shards: Shards, args: tuple):
        """One reduction; rerun (same tree, same bits) if data was lost with a worker."""
        for attempt in range(MAX_STEP_RESTARTS + 1):
            try:
                return self._reduce(params, shards, args)
            except FutureCancelledError:
                if attempt == MAX_STEP_RESTARTS or not self._recover(shards):
                    raise

    def _recover(self, shards: Shards) -> bool:
        """Resend what a dead worker took with it; False when nothing was lost (then the
        cancellation was not ours to repair). The client learns of each lost key by its
        own message, so wait a moment for them to arrive."""
        deadline = time.monotonic() + LOST_DATA_WAIT_S
        while not shards.lost() and not self._sent_lost() and time.monotonic() < deadline:
            time.sleep(0.05)
        restored = shards.restore()
        return bool(restored) or self._sent_lost()  # both are sent again by the rerun

    def _sent_lost(self) -> bool:
        """Whether the function or this step's parameters died with a worker."""
        return any(f is not None and f.status != "finished"
                   for f in (self._fn_future, self._params_future))

    def _reduce(self, params, shards: Shards, args: tuple):
        n = len(shards)
        step = uuid.uuid4().hex[:12]
        self._params_future = _send(self.client, (params, args), "diffprog-params")
        task = _StepTask(self.token, self._function_future(), self.engine,
                         self._params_future, shards, step, self.fast_math)
        leaves = self.leaf_tasks or LEAF_TASKS_PER_THREAD * _threads(self.client)
        depth = math.ceil(math.log2(max(1, min(leaves, n))))
        total = _submit_tree(self.client, task, 0, n, depth).result()
        self._params_future = None  # done: the workers may drop this step's parameters
        _check_every_shard_once(total, n)
        value, grads = total.value, total.grads
        if self.reduce == "mean":
            value, grads = value / n, [g / n for g in grads]
        return value, unflatten(total.treedef, grads)


@dataclass
class _StepTask:
    """What every task of one step shares (the tree below is built from it)."""

    token: str
    fn: Future
    engine: str | None
    broadcast: Future
    shards: Shards
    step: str
    fast_math: bool = False


def _submit_tree(client, task: _StepTask, lo: int, hi: int, depth: int) -> Future:
    """Submit the reduction of shards lo..hi-1: a leaf task at ``depth`` (or a single
    shard), else the sum of the two halves split at :func:`_midpoint`."""
    name = f"{task.step}-shards-{lo}-{hi - 1}"
    if hi - lo == 1 or depth == 0:
        return client.submit(_shard_range_task, task.token, task.fn, task.engine,
                             task.broadcast, lo, hi, task.shards.futures[lo:hi],
                             task.shards.treedefs[lo:hi], task.fast_math,
                             key=f"diffprog-grad-{name}")
    mid = _midpoint(lo, hi)
    return client.submit(_combine, _submit_tree(client, task, lo, mid, depth - 1),
                         _submit_tree(client, task, mid, hi, depth - 1),
                         key=f"diffprog-sum-{name}")


def _check_every_shard_once(total: Partial, n: int) -> None:
    """Nothing is silently dropped: the sum must hold shards 0..n-1, each once."""
    counts = np.bincount(np.asarray(total.shards, dtype=np.int64), minlength=n)
    missing = [int(i) for i in np.flatnonzero(counts[:n] == 0)]
    repeated = [int(i) for i in np.flatnonzero(counts > 1)]
    if missing or repeated or len(counts) > n:
        raise EngineError(f"diffprog.distributed: the reduced gradient holds {len(total.shards)} "
                          f"shard gradients for {n} shards (missing: {missing[:10]}, counted "
                          f"twice: {repeated[:10]}); refusing a wrong sum. This is a bug: "
                          f"please report it with the cluster's logs.")


def value_and_grad(fn: Callable, client=None, reduce: str = "sum", engine: str | None = None,
                   leaf_tasks: int | None = None) -> DistributedValueAndGrad:
    """``(value, gradient)`` of ``fn(params, shard, *args)`` over every shard, computed
    where the shards live and reduced with a tree; the gradient is w.r.t. ``params``.

    ``reduce="sum"`` adds the shards' values and gradients, ``"mean"`` divides the sums
    by the number of shards (equal-sized shards of a mean loss: the full-data mean).
    ``leaf_tasks`` (default: 2 per worker thread) is how many tasks compute shard
    gradients per step; it changes the cost, never the result's bits.

    >>> vg = dpd.value_and_grad(loss, client=client, reduce="mean")  # doctest: +SKIP
    >>> value, grads = vg(params, shards)  # doctest: +SKIP
    """
    return DistributedValueAndGrad(fn, client, reduce, engine, leaf_tasks)


def grad(fn: Callable, client=None, reduce: str = "sum", engine: str | None = None,
         leaf_tasks: int | None = None) -> Callable:
    """Gradient of ``fn(params, shard, *args)`` summed (or, ``reduce="mean"``, averaged)
    over shards; see :func:`value_and_grad`. ``shards``: a :class:`Shards` from
    :func:`shard` (sent once, reused), or anything :func:`shard` takes (sent for this
    call and dropped after it).

    >>> g = dpd.grad(loss, client=client)(params, shards)  # doctest: +SKIP
    """
    vg = DistributedValueAndGrad(fn, client, reduce, engine, leaf_tasks)

    def gradient(params, shards, *args):
        return vg(params, shards, *args)[1]
    gradient.value_and_grad = vg
    return gradient


def fit(loss: Callable, params, shards, opt, steps: int, client=None, args: Sequence = (),
        reduce: str = "mean", state=None, callback: Callable | None = None,
        engine: str | None = None, leaf_tasks: int | None = None):
    """Train ``params`` for ``steps`` steps of ``opt`` (e.g. ``dp.optim.Adam(1e-2)``) on
    the gradient of ``loss(params, shard, *args)`` over ``shards``; returns
    ``(params, state)``. The shards are sent once; each step broadcasts the parameters
    and reduces the gradients; the optimizer runs on the client. ``callback(step, value,
    params)`` runs after each step (record a loss history there). Pass ``state`` to
    resume.

    >>> params, state = dpd.fit(loss, params, shards, dp.optim.Adam(1e-2), steps=100,
    ...                         client=client)  # doctest: +SKIP
    """
    if not isinstance(steps, int) or steps < 0:
        raise ArgumentValueError(f"diffprog.distributed.fit: steps must be a non-negative "
                                 f"int, got {steps!r}.")
    step_fn = DistributedValueAndGrad(loss, client, reduce, engine, leaf_tasks)
    owned = not isinstance(shards, Shards)
    shards = shard(shards, step_fn.client)
    state = opt.init(params) if state is None else state
    try:
        for step in range(steps):
            value, grads = step_fn(params, shards, *args)
            params, state = opt.update(grads, state, params)
            if callback is not None:
                callback(step, value, params)
    finally:
        if owned:
            shards.release()
    return params, state


# ====================================================================== ensembles

def _members(P) -> tuple[list, TreeDef, int]:
    """P as stacked leaves with one leading axis: a list of members is stacked."""
    if isinstance(P, list):
        if not P:
            raise ArgumentValueError("diffprog.distributed.map: P is an empty list.")
        structures = {flatten(p)[1] for p in P}
        if len(structures) != 1:
            raise ArgumentError(f"diffprog.distributed.map: members of P have different "
                                f"structures {sorted(repr(s) for s in structures)[:3]}. "
                                f"Fix: give every member the same structure.")
        per_member = [flatten(p)[0] for p in P]
        leaves = [np.stack([m[j] for m in per_member]) for j in range(len(per_member[0]))]
        return leaves, flatten(P[0])[1], len(P)
    leaves, treedef = flatten(P)
    leaves = [np.asarray(x) for x in leaves]
    lengths = {x.shape[0] if x.ndim else None for x in leaves}
    if not leaves or None in lengths or len(lengths) != 1:
        raise ShapeError(f"diffprog.distributed.map: P must be a list of members or arrays "
                         f"(or a tuple/dict of arrays) with one leading axis of members; got "
                         f"leading lengths {sorted(repr(n) for n in lengths)}. Fix: stack "
                         f"the members along axis 0.")
    return leaves, treedef, lengths.pop()


#: how dpd.map runs a chunk: what the worker builds for it (see _worker_program)
HOW = {"vmap": "batched", "loop": "value", "python": "plain"}


def _call_chunk(call: Callable, chunk, lo: int, how: str):
    """One call over a chunk of members (each leaf has a leading axis): the batched call
    ``dp.vmap(fn)(chunk)``, one program for the whole chunk (``how="vmap"``), or a loop
    over the members on the worker, one call each (``"loop"``, ``"python"``)."""
    leaves, treedef = flatten(chunk)
    size = leaves[0].shape[0]
    if how == "vmap":
        try:
            out = call(chunk)
        except Exception as e:
            where = f"ensemble members {lo}..{lo + size - 1} (one dp.vmap call)"
            raise RemoteError.of(e, where, f"dp.vmap(fn)(P[{lo}:{lo + size}]), or dpd.map("
                                           f"..., how='loop') to find the member") from e
        out_leaves, out_treedef = flatten(out)
        return unflatten(out_treedef, [_to_host(x) for x in out_leaves])
    outs = []
    for j in range(size):
        member = unflatten(treedef, [x[j] for x in leaves])
        try:
            outs.append(call(member))
        except Exception as e:
            raise RemoteError.of(e, f"ensemble member {lo + j}", f"fn(P[{lo + j}])") from e
    out_leaves = [flatten(o)[0] for o in outs]
    stacked = [np.stack([_to_host(o[k]) for o in out_leaves]) for k in range(len(out_leaves[0]))]
    return unflatten(flatten(outs[0])[1], stacked)


def _map_chunk_task(token, fn, how, engine, lo, chunk, fast_math=False):
    call = _worker_program(token, fn, HOW[how], engine, fast_math)
    return _call_chunk(call, chunk, lo, how)


def map(fn: Callable, P, client=None, chunk: int = 100, how: str = "vmap",
        engine: str | None = None):
    """``[fn(p) for p in P]`` on the cluster, stacked: one task per ``chunk`` members.

    ``P`` is a list of members (arrays or nested tuples/dicts of arrays), or an array (or
    tuple/dict of arrays) whose axis 0 indexes the members. The result has the
    structure of one ``fn(p)`` with a leading axis of ``len(P)``, in P's order.

    ``how`` says what one task does with its chunk:

    * ``"vmap"`` (default): one call of ``dp.vmap(fn)`` on the chunk, a single batched
      program (traced once per worker and chunk size, kept there); ``fn`` must be
      traceable without Python branches on its input (as for ``dp.vmap``);
    * ``"loop"``: ``fn`` compiled by diffprog once per worker, called member by member
      (a failing member is named);
    * ``"python"``: ``fn`` called as plain Python, member by member (for code diffprog
      cannot trace, e.g. a SciPy solver).

    >>> P = np.random.default_rng(0).uniform(0.5, 1.5, (2000, 4))  # doctest: +SKIP
    >>> ys = dpd.map(lambda p: odeint(rhs, y0, ts, p), P, client=client)  # doctest: +SKIP
    >>> ys.shape  # doctest: +SKIP
    (2000, 51, 2)
    """
    client = _client(client)
    if not isinstance(chunk, int) or chunk < 1:
        raise ArgumentValueError(f"diffprog.distributed.map: chunk must be a positive int, "
                                 f"got {chunk!r}.")
    if how not in HOW:
        raise ArgumentValueError(f"diffprog.distributed.map: how must be one of "
                                 f"{sorted(HOW)}, got {how!r}.")
    fn, own_engine, fast_math = _plain(fn)
    engine = engine or own_engine
    leaves, treedef, n = _members(P)
    token = _function_token(fn, HOW[how], engine, fast_math)
    fn_future = _send(client, fn, token)
    run = uuid.uuid4().hex[:12]
    futures = [client.submit(_map_chunk_task, token, fn_future, how, engine, lo,
                             unflatten(treedef, [x[lo:lo + chunk] for x in leaves]), fast_math,
                             key=f"diffprog-map-{run}-members-{lo}-{min(lo + chunk, n) - 1}")
               for lo in range(0, n, chunk)]
    results = client.gather(futures)
    out_treedef = flatten(results[0])[1]
    per_chunk = [flatten(r)[0] for r in results]
    return unflatten(out_treedef, [np.concatenate([c[k] for c in per_chunk])
                                   for k in range(len(per_chunk[0]))])
