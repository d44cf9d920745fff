"""The ONNX toolkit: files, graphs and sessions. Reading and saving (:mod:`.io`), walking and editing (:mod:`.graph`), and
the one ONNX Runtime session factory (:mod:`.session`)."""

from .graph import (
    AXIS_NAMES,
    all_names,
    dims_of,
    dtype_of,
    graph_inputs,
    iter_tensors,
    name_nodes,
    op_histogram,
    parameter_count,
    precision_problem,
    prune,
    relax_input,
    rename,
    set_dims,
    unique_name,
    walk_nodes,
)  # fmt: skip
from .io import check_size, external_data_files, load_external_data, read_onnx, save_onnx
from .session import create_session, ort_message

__all__ = [
    "AXIS_NAMES", "all_names", "check_size", "create_session", "dims_of", "dtype_of", "external_data_files", "graph_inputs",
    "iter_tensors", "load_external_data", "name_nodes", "op_histogram", "ort_message", "parameter_count",
    "precision_problem", "prune", "read_onnx", "relax_input", "rename", "save_onnx", "set_dims", "unique_name", "walk_nodes",
]  # fmt: skip
