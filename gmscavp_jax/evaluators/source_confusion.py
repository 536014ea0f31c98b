"""Which part of the sounding source does generated audio get right? (issue 18's diagnosis)

In the synthetic world a class's look is a shape and a colour (`SyntheticAVSource`'s
class_shapes, class_colours), and its timbre is its own. The evaluator's audio classifier names
the class of each generated clip; `diagnose` counts how often that class is a sounding one, has
the colour of a sounding one, or has its shape, beside what a random class would score. A
condition that carries colour but not shape (colour well above chance, shape at chance) points
at the video encoder, not at the denoiser. The command is tools/source_confusion.py.
"""

import json
import os

import numpy as np

from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import generation
from gmscavp_jax.infra import errors


def look_matches(pred: np.ndarray, labels: np.ndarray, shapes: np.ndarray,
                 colours: np.ndarray) -> dict:
  """Percent of predicted classes pred (N,) that are sounding (labels (N,K) multi-hot), or
  share the shape or the colour of a sounding class; shapes (K,), colours (K,3) per class."""
  sounding = labels > 0
  colour_id = np.unique(colours, axis=0, return_inverse=True)[1].reshape(-1)
  same_shape = shapes[pred][:, None] == shapes[None, :]  # (N, K)
  same_colour = colour_id[pred][:, None] == colour_id[None, :]
  return {'class': 100.0 * float(np.mean(sounding[np.arange(len(pred)), pred])),
          'shape': 100.0 * float(np.mean((same_shape & sounding).any(axis=1))),
          'colour': 100.0 * float(np.mean((same_colour & sounding).any(axis=1)))}


def diagnose(workdir: str, num_clips: int, evaluator_dir: str | None) -> dict:
  """{'step', 'num_clips', 'generated': look_matches, 'random_class': its expected value for
  a class drawn uniformly}; also written to WORKDIR/source_confusion.json."""
  config, mesh, models, params, step = state_lib.restore_workdir(
      workdir, restore=state_lib.restore_generator)
  if config.data.name != 'synthetic':
    raise errors.ConfigError(f'data.name={config.data.name!r}: expected the synthetic world, '
                             'the only one whose classes have known looks')
  source = pipeline.make_source(config, 'test')
  evalset, _ = classifier_training.load_or_train(config, evaluator_dir, mesh)
  clips = generation.test_clips(config, num_clips)
  mel = sampling.Generator(config, mesh, models).generate(params, clips['frames'],
                                                          labels=clips['labels'])
  pred = np.argmax(np.asarray(evalset.audio(mel)['logits']), axis=1)
  looks = (clips['labels'], source.class_shapes, source.class_colours)
  chance = [look_matches(np.full(len(pred), c), *looks) for c in range(config.data.num_classes)]
  out = {'step': step, 'num_clips': len(pred), 'generated': look_matches(pred, *looks),
         'random_class': {key: float(np.mean([c[key] for c in chance])) for key in chance[0]}}
  with open(os.path.join(workdir, 'source_confusion.json'), 'w') as f:
    json.dump(out, f, indent=2)
  return out
