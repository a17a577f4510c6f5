"""deit_functional: DeiT-tiny (and the rest of the ViT family) as plain tensor code, and the methods that explain it.

The names below load from their modules on first use (PEP 562), so that importing one module
costs only what it imports: attention flow's worker processes import max_flow.py, which needs
numpy and SciPy, never torch.
"""
import importlib

_MODULE_OF = {
    "MEAN": "images", "STD": "images", "ImageError": "images", "load_image": "images",
    "read_picture": "images", "to_input": "images",
    "explain": "explanations", "explain_by_layer": "explanations",
    "forward": "model",
    "WeightsError": "weights", "load_weights": "weights",
    "METHODS": "methods", "attention_rollout": "rollout", "gradient_rollout": "rollout",
    "chefer_rollout": "rollout", "attention_flow": "rollout",
}
__all__ = list(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
