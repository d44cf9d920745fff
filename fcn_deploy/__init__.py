"""fcn-deploy: Fully Convolutional Networks from PyTorch to verified inference engines."""

__version__ = "0.1.0"
