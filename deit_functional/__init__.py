"""deit_functional: DeiT-tiny as plain tensor code, and the rollouts that explain it."""
from .images import MEAN, STD, ImageError, load_image, read_picture, to_input
from .explain import explain, explain_by_layer
from .model import forward
from .weights import WeightsError, load_weights
from .rollout import METHODS, attention_rollout, chefer_rollout, gradient_rollout
