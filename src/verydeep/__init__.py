"""verydeep: Simonyan & Zisserman's very deep ConvNets (VGG), the whole paper. See README.md."""
from .card import CAFFE, TORCHVISION, VERYDEEP, Card, Preprocess, VGGConfig
from .errors import ConfigError, UserError, WeightsError
from .fast import FastVGG
from .models import VGG, count_parameters, init_from, init_weights, list_models, model_config, vgg
from .precision import Precision
from .version import __version__
from .weights import load, load_into, save

__all__ = ["FastVGG", "vgg", "list_models", "init_from", "init_weights", "model_config", "count_parameters", "VGG",
           "VGGConfig", "Card", "Preprocess", "Precision", "CAFFE", "TORCHVISION", "VERYDEEP", "load", "load_into",
           "save", "UserError", "ConfigError", "WeightsError", "__version__"]
