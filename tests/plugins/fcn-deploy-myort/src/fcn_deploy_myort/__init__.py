"""A backend from another package: ONNX Runtime with its own engine name and one build option of its own."""
