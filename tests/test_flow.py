"""Attention Flow against networkx's maximum flow on small graphs, cases whose answer is known by
construction, and the worker processes that solve it."""
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from deit_functional import METHODS, attention_flow, explain, max_flow
from deit_functional.max_flow import SCALE, token_flows
from deit_functional.rollout import HEAD_FUSIONS, discard_lowest, fuse_heads

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

ROOT = str(Path(max_flow.__file__).resolve().parents[1])


def random_attentions(seed, batch=2, layers=3, tokens=10, heads=3):
    """Softmax maps (B, H, N, N) per layer, peaky enough that discard leaves real gaps."""
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(batch, heads, tokens, tokens, generator=g)).softmax(-1) for _ in range(layers)]


def networkx_flows(attentions, head_fusion, discard_ratio):
    """The definition, in float64, solved by networkx -> (B, N) maximum flows from the top CLS
    node to each token of layer 0."""
    fused = [discard_lowest(fuse_heads(a, head_fusion), discard_ratio).double().numpy() for a in attentions]
    B, N, _ = fused[0].shape
    L = len(fused)
    flows = np.zeros((B, N))
    for b in range(B):
        graph = nx.DiGraph()
        for layer, a in enumerate(fused, start=1):
            skip = a[b] + np.eye(N)
            skip /= skip.sum(axis=1, keepdims=True)
            for i in range(N):
                for j in range(N):
                    if skip[i, j] > 0:
                        graph.add_edge((layer, i), (layer - 1, j), capacity=skip[i, j])
        for j in range(N):
            flows[b, j] = nx.maximum_flow_value(graph, (L, 0), (0, j))
    return flows


def scaled_capacities(attentions, head_fusion, discard_ratio):
    """The integer capacities the library builds, built here in numpy: (B, L, N, N)."""
    layers = []
    for a in attentions:
        skip = discard_lowest(fuse_heads(a, head_fusion), discard_ratio).double().numpy() + np.eye(a.shape[-1])
        layers.append(np.rint(skip / skip.sum(axis=2, keepdims=True) * SCALE).astype(np.int32))
    return np.stack(layers, axis=1)


@pytest.mark.parametrize("seed, head_fusion, discard_ratio",
                         [(0, "mean", 0.0), (1, "max", 0.5), (2, "min", 0.9), (3, "mean", 0.7)])
def test_flows_equal_networkx_within_the_documented_precision(seed, head_fusion, discard_ratio):
    attentions = random_attentions(seed)
    expected = networkx_flows(attentions, head_fusion, discard_ratio)
    capacities = scaled_capacities(attentions, head_fusion, discard_ratio)
    edges = np.count_nonzero(capacities)
    # max_flow.py's bound: 2^-31 per edge of a minimum cut; no cut holds more than every edge
    np.testing.assert_allclose(token_flows(capacities, processes=1) / SCALE, expected, rtol=0, atol=edges / 2 ** 31)
    assert np.abs(token_flows(capacities, processes=1) / SCALE - expected).max() < 1e-8  # and in practice
    # the library's map: patches only, each picture's scaled to max 1
    patches = expected[:, 1:]
    ours = attention_flow(attentions, head_fusion, discard_ratio)
    np.testing.assert_allclose(ours.flatten(1).numpy(), patches / patches.max(axis=1, keepdims=True),
                               rtol=0, atol=1e-6)


def test_a_single_chain_carries_its_narrowest_edge_and_parallel_chains_add_up():
    L, N = 3, 5
    capacities = np.zeros((1, L, N, N), np.int32)
    # top CLS -> token 2 of layer 2 -> token 4 of layer 1 -> token 1 of layer 0
    capacities[0, 2, 0, 2], capacities[0, 1, 2, 4], capacities[0, 0, 4, 1] = 700, 300, 500
    # and a second chain to token 3: top CLS -> 1 -> 1 -> 3, narrowest in the middle
    capacities[0, 2, 0, 1], capacities[0, 1, 1, 1], capacities[0, 0, 1, 3] = 900, 40, 60
    # a third chain to token 3 that shares nothing with the second: CLS -> 3 -> 3 -> 3
    capacities[0, 2, 0, 3], capacities[0, 1, 3, 3], capacities[0, 0, 3, 3] = 5, 80, 80
    # other nodes of the top layer have edges too, but nothing flows into them
    capacities[0, 2, 4, :] = 1000
    for processes in (1, 2):
        np.testing.assert_array_equal(token_flows(capacities, processes), [[0, 300, 0, 40 + 5, 0]])


def test_a_patch_no_path_reaches_gets_zero():
    attentions = random_attentions(4, tokens=17)
    for a in attentions:
        a[..., 7] = 0  # no token attends to token 7 in any layer: only its own skip edge is left
    for head_fusion in HEAD_FUSIONS:
        maps = attention_flow(attentions, head_fusion).flatten(1)
        assert (maps[:, 6] == 0).all() and (maps.amax(dim=1) == 1).all()


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9, 0.99])
def test_flows_lie_in_0_1_and_maps_are_scaled_to_max_1(discard_ratio):
    attentions = random_attentions(5, batch=3, layers=4, tokens=26)
    flows = token_flows(scaled_capacities(attentions, "max", discard_ratio)) / SCALE
    N = flows.shape[1]
    # the top CLS node sends at most its row's sum, 1, plus at most half a unit per rounded edge
    assert flows.min() >= 0 and flows.max() <= 1 + N / 2 ** 31
    maps = attention_flow(attentions, "max", discard_ratio)
    assert torch.isfinite(maps).all() and maps.min() >= 0
    # max 1, or all 0 where no flow reaches a patch (a high discard can leave only the CLS column)
    reaches = torch.from_numpy(flows[:, 1:].max(axis=1) > 0).float()
    assert torch.equal(maps.amax(dim=(1, 2)), reaches) and reaches.sum() >= 2


def test_the_batch_equals_picture_by_picture_and_workers_equal_this_process():
    attentions = random_attentions(6, batch=4, layers=5, tokens=26)
    capacities = scaled_capacities(attentions, "mean", 0.8)
    here = token_flows(capacities, processes=1)
    np.testing.assert_array_equal(token_flows(capacities, processes=2), here)
    np.testing.assert_array_equal(token_flows(capacities, processes=3), here)
    for b in range(4):
        np.testing.assert_array_equal(token_flows(capacities[b:b + 1], processes=2), here[b:b + 1])
    together = attention_flow(attentions, "mean", 0.8)
    for b in range(4):
        assert torch.equal(attention_flow([a[b:b + 1] for a in attentions], "mean", 0.8)[0], together[b])


def test_explain_gives_the_flow_of_the_models_own_maps(weights, images):
    from deit_functional import forward
    _, maps = explain(weights, images[:2], "flow", head_fusions=("max", "mean"), discard_ratio=0.9)
    with torch.no_grad():
        _, attentions = forward(weights, images[:2])
    for fusion in ("max", "mean"):
        assert torch.equal(maps[fusion], attention_flow(attentions, fusion, 0.9))
    assert METHODS["flow"].file_name == "attention-flow" and not METHODS["flow"].uses_gradient


def test_a_dead_worker_is_reported_and_replaced():
    capacities = scaled_capacities(random_attentions(7), "mean", 0.5)
    expected = token_flows(capacities, processes=1)
    workers = max_flow._workers(2)
    token_flows(capacities, processes=2)  # both workers started
    victim = workers.idle.get()
    victim.kill()
    victim.wait()
    workers.idle.put(victim)
    with pytest.raises(RuntimeError, match="worker process ended unexpectedly"):
        for _ in range(2):  # the dead one is certain to get a task of the next two calls' four
            token_flows(capacities, processes=2)
    np.testing.assert_array_equal(token_flows(capacities, processes=2), expected)


def test_worker_processes_import_neither_torch_nor_the_callers_script():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import deit_functional.max_flow; "
            "print(sorted(m for m in ('torch', 'einops', 'timm') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    # a caller's main script without a __main__ guard, even from stdin, is never re-run
    script = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
              "print('started', flush=True)\n"
              "import numpy as np\n"
              "from deit_functional.max_flow import token_flows\n"
              "c = np.zeros((1, 2, 5, 5), np.int32); c[0, 1, 0, 2] = c[0, 0, 2, 3] = 7\n"
              "print(token_flows(c, processes=2).tolist())\n")
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["started", "[[0,", "0,", "0,", "7,", "0]]"]


def test_missing_scipy_is_one_clear_error():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); sys.modules['scipy'] = None\n"
            "import torch\n"
            "from deit_functional import attention_flow\n"
            "try:\n"
            "    attention_flow([torch.rand(1, 3, 5, 5)])\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == ("attention flow needs SciPy: pip install scipy, or the project's extra: "
                                     "pip install -e '.[flow]'")
