"""Tiny ONNX models that tests build themselves (needs the onnx package, a test extra)."""

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper
from onnx import TensorProto


def linear_projection(path: str, weights: np.ndarray) -> str:
  """Writes an ONNX model y = x @ weights, x (batch, window) float32 -> (batch, D); returns
  `path`."""
  graph = helper.make_graph(
      [helper.make_node('MatMul', ['wave', 'weights'], ['embedding'])], 'projection',
      [helper.make_tensor_value_info('wave', TensorProto.FLOAT, [None, weights.shape[0]])],
      [helper.make_tensor_value_info('embedding', TensorProto.FLOAT, [None, weights.shape[1]])],
      [numpy_helper.from_array(weights.astype(np.float32), 'weights')])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  model.ir_version = 9  # Readable by every onnxruntime of the last years.
  onnx.checker.check_model(model)
  onnx.save(model, path)
  return path
