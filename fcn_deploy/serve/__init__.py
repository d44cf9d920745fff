"""Serving with NVIDIA's Triton Inference Server.

* :mod:`.triton`: ``fcn-deploy serve``, a real Triton server (PyTriton's bundled ``tritonserver``)
  for any engine, ONNX file or checkpoint the toolkit opens; :mod:`.in_triton` is the model inside it.
* :mod:`.repository`: ``fcn-deploy export-triton``, a model repository for NVIDIA's Triton
  container: the engine served natively, Python-backend pre/post-processing and an ensemble.
* :mod:`fcn_deploy.bench.server`: ``fcn-deploy benchmark --server``, throughput and latency under concurrency.

Both servers offer the same interface (:mod:`fcn_deploy.backends.remote`): UINT8 ``image`` in,
``mask`` out, with the engine's facts published as model config parameters.
"""
