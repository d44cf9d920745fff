"""Backends behind one small runner interface: PyTorch (the reference), ONNX Runtime, TensorRT."""

from .base import Prediction, Profile, Runner, TensorSpec

__all__ = ["Prediction", "Profile", "Runner", "TensorSpec"]
