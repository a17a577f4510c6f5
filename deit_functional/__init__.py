"""deit_functional: DeiT-tiny as plain tensor code, and the rollouts that explain it."""
from .images import MEAN, STD, ImageError, load_image, read_picture, to_input
from .explain import explain
from .model import forward
from .weights import WeightsError, load_weights
from .rollout import attention_rollout, chefer_rollout, gradient_rollout
