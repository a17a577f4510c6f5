"""deit_functional: DeiT-tiny as plain tensor code, and the rollouts that explain it."""
from .images import MEAN, STD, ImageError, load_image, read_picture, to_input
from .model import forward
from .weights import WeightsError, load_weights
