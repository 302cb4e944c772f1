"""verydeep: Simonyan & Zisserman's very deep ConvNets (VGG), the whole paper. See README.md."""
from .errors import UserError, WeightsError
from .fast import FastVGG
from .models import (CAFFE, TORCHVISION, VERYDEEP, VGG, Preprocess, VGGConfig, count_parameters, init_from,
                     init_weights, list_models, model_config, vgg)
from .weights import load, load_into, save

__version__ = "0.1.0"
__all__ = ["FastVGG", "vgg", "list_models", "init_from", "init_weights", "model_config", "count_parameters", "VGG", "VGGConfig",
           "Preprocess", "CAFFE", "TORCHVISION", "VERYDEEP", "load", "load_into", "save", "UserError",
           "WeightsError", "__version__"]
