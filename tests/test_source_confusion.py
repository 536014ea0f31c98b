"""evaluators/source_confusion: which part of the source (colour, shape) audio gets right."""

import numpy as np

from gmscavp_jax.evaluators import source_confusion


def test_look_matches_counts_class_colour_and_shape():
  shapes = np.arange(4) % 2  # Classes 0..3: shapes 0,1,0,1.
  colours = np.array([[1., 0, 0], [1., 0, 0], [0, 1., 0], [0, 1., 0]])  # Colours a,a,b,b.
  labels = np.eye(4)[[0, 0, 0, 3]]  # Sounding: 0 (shape 0, a) x3, then 3 (shape 1, b).
  pred = np.array([0, 1, 2, 0])  # Right; colour only; shape only; neither.
  got = source_confusion.look_matches(pred, labels, shapes, colours)
  assert got == {'class': 25.0, 'colour': 50.0, 'shape': 50.0}

