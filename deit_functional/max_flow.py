"""Attention Flow's arithmetic: maximum flows through the layered attention graph.

Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020, §3. For one picture,
Ã_1..Ã_L are the layers' maps with the skip connection, rows renormalised (rollout.add_skip).
The graph has L+1 layers of N nodes; node i of layer l has an edge to node j of layer l-1 with
capacity Ã_l[i, j]. Token j's value is the maximum flow from node 0 (the class token) of layer
L to node j of layer 0. Rollout sums, over every path, the product of its edges; a flow is held
to each path's narrowest edge, and paths that share an edge share its capacity.

Integer capacities. SciPy's maximum_flow (Dinic's algorithm) takes int32 capacities, so each
Ã_l[i, j], in [0, 1], is scaled by SCALE = 2^30 and rounded: an edge moves by at most 2^-31.
A maximum flow equals the capacity of a minimum cut, so a value moves by at most 2^-31 times
the number of edges a minimum cut holds: under 2.2e-4 even for a cut of all ~466,000 edges,
and under 1e-8 in the tests against networkx's flows on float capacities. Every row of Ã sums to 1,
so no flow comes near int32's limit of 2^31.

Speed. Only node 0 of the top layer sends anything, so the other top-layer nodes are left out;
the other nodes of layer 0 are dead ends, so one graph serves all N sinks. SciPy holds the GIL
while it solves, so threads would not help: the problems are shared among worker processes,
one per core. Each is `python -c` of this module's ``serve``, started once and kept until
Python exits: it imports numpy, SciPy and this module alone (no torch), and never the caller's
main script, as multiprocessing's workers would (a script without a ``__main__`` guard, stdin
or a notebook all work). A task goes down a worker's stdin as two .npy arrays, and its flows
come back up its stdout as one.

Shapes: B batch, L layers, N tokens (CLS first). numpy and SciPy only: no torch here.
"""
import atexit
import functools
import io
import os
import queue
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCALE = 1 << 30


class FlowUnavailable(ImportError):
    """SciPy, which attention flow needs, is not installed."""


def require_scipy():
    """-> SciPy's maximum_flow, or FlowUnavailable saying how to install it."""
    try:
        from scipy.sparse.csgraph import maximum_flow
    except ImportError:
        raise FlowUnavailable("attention flow needs SciPy: pip install scipy, or the project's extra: "
                              "pip install -e '.[flow]'") from None
    return maximum_flow


def layered_graph(capacities):
    """(L, N, N) integer capacities, [l-1][i, j] on the edge from node i of layer l to node j of
    layer l-1 -> SciPy's CSR graph over the (L+1)*N nodes, node i of layer l numbered l*N + i.
    Of the top layer only node 0's edges are kept: nothing flows into the others."""
    from scipy.sparse import csr_array
    L, N, _ = capacities.shape
    kept = capacities.astype(np.int32)  # a copy
    kept[-1, 1:] = 0
    below, i, j = np.nonzero(kept)  # row-major: tails ascending, heads ascending within a tail
    edges_per_node = np.count_nonzero(kept, axis=2).ravel()  # nodes of layers 1..L
    indptr = np.concatenate([np.zeros(N + 1, np.int64), np.cumsum(edges_per_node)])  # layer 0: none
    heads = (below * N + j).astype(np.int32)
    return csr_array((kept[below, i, j], heads, indptr.astype(np.int32)), shape=((L + 1) * N,) * 2)


def max_flows(capacities, sinks):
    """(L, N, N) integer capacities, token indices -> (len(sinks),) int64: the maximum flow from
    node 0 of layer L to node j of layer 0, for each j in ``sinks``."""
    maximum_flow = require_scipy()
    graph = layered_graph(capacities)
    source = capacities.shape[0] * capacities.shape[1]  # node 0 of layer L
    return np.array([maximum_flow(graph, source, int(j)).flow_value for j in sinks], dtype=np.int64)


def token_flows(capacities, processes=None):
    """(B, L, N, N) integer capacities -> (B, N) int64: each picture's maximum flow to each token
    of layer 0. The problems are shared among ``processes`` worker processes (default: one per
    core; 1 solves them here), each picture split in as many parts, so one picture uses every
    core too."""
    require_scipy()  # here, before any worker starts
    B, L, N, _ = capacities.shape
    processes = processes or usable_cores()
    parts = [np.arange(part, N, processes) for part in range(processes)]  # interleaved: alike in cost
    tasks = [(b, sinks) for b in range(B) for sinks in parts if len(sinks)]
    if processes == 1:
        results = [max_flows(capacities[b], sinks) for b, sinks in tasks]
    else:
        results = _workers(processes).map([(capacities[b], sinks) for b, sinks in tasks])
    flows = np.zeros((B, N), dtype=np.int64)
    for (b, sinks), values in zip(tasks, results):
        flows[b, sinks] = values
    return flows


def usable_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _workers(count):
    """``count`` worker processes, started on first use and kept until Python exits."""
    return Workers(count)


class Workers:
    """Worker processes running ``serve``; ``map`` hands each task to the next idle one."""

    def __init__(self, count):
        root = str(Path(__file__).resolve().parents[1])  # this very copy of the package
        self.command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); "
                                              "from deit_functional.max_flow import serve; serve()"]
        self.count, self.idle = count, queue.SimpleQueue()
        for _ in range(count):
            self.idle.put(self._start())
        atexit.register(self.close)

    def _start(self):
        return subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def map(self, tasks):
        """[(capacities (L, N, N), sinks)] -> [their max_flows], in order."""
        threads = ThreadPoolExecutor(self.count)
        try:
            return list(threads.map(self._solve, tasks))
        finally:  # on Ctrl-C, only the tasks under way are waited for
            threads.shutdown(cancel_futures=True)

    def _solve(self, task):
        process = self.idle.get()
        try:
            for array in task:
                send(process.stdin, array)
            return receive(process.stdout)
        except (OSError, EOFError):  # a broken pipe, or no answer: the worker died
            process.kill()
            process.wait()
            process = self._start()  # in its place, for the tasks to come
            raise RuntimeError("an attention-flow worker process ended unexpectedly") from None
        finally:
            self.idle.put(process)

    def close(self):
        """End every worker: each ends when its stdin does. Called at exit, when all are idle."""
        for _ in range(self.count):
            process = self.idle.get()
            process.stdin.close()
            process.wait()


def serve():
    """A worker's loop: read (capacities, sinks) from stdin, write their max_flows to stdout,
    until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; its exit ends us
    tasks, answers = sys.stdin.buffer, sys.stdout.buffer
    while tasks.peek(1):
        capacities, sinks = receive(tasks), receive(tasks)
        send(answers, max_flows(capacities, sinks))


def send(stream, array):
    """Write ``array`` to a pipe as its .npy bytes, after their length."""
    data = io.BytesIO()
    np.save(data, array, allow_pickle=False)
    stream.write(len(data.getbuffer()).to_bytes(8, "little"))
    stream.write(data.getbuffer())
    stream.flush()


def receive(stream):
    """Read one array that ``send`` wrote; EOFError where the pipe ends first."""
    size = int.from_bytes(stream.read(8), "little")
    data = stream.read(size)
    if size == 0 or len(data) < size:
        raise EOFError("the pipe ended")
    return np.load(io.BytesIO(data), allow_pickle=False)
