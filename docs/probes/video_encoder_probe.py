"""Can a video encoder learn shape at all? Supervised: synthetic frames -> visible classes.

  python docs/probes/video_encoder_probe.py STEM WIDTHS STEPS [PATCH]
  e.g. python docs/probes/video_encoder_probe.py conv 32,64 3000 8

Trains models/encoders.VideoEncoder (mean-pooled, one linear head) with sigmoid BCE on each
clip's visible classes (4 of its 16 frames, 3072 train clips of the runlocal world, batch
32, Adam 1e-3), then prints class/shape/colour accuracy of the top logit on the test clips
that show one object. An upper bound for what the contrastive encoder could learn in as many
steps with the same architecture.
"""

import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from gmscavp_jax.data import synthetic
from gmscavp_jax.models import encoders


def _load(split, n):
  src = synthetic.SyntheticAVSource(split=split, num_clips=n, seed=0)
  clips = [src[i] for i in range(n)]
  return np.stack([c['frames'][::4] for c in clips]), np.stack([c['visible'] for c in clips])


def main(stem, widths, steps, patch=8):
  start = time.time()
  (x_train, y_train), (x_test, y_test) = _load('train', 3072), _load('test', 256)

  class Net(nn.Module):

    @nn.compact
    def __call__(self, frames):
      h = encoders.VideoEncoder(patch=patch, widths=widths, blocks_per_stage=1, num_groups=8,
                                stem=stem)(frames)
      return nn.Dense(y_train.shape[1])(h.mean(axis=(1, 2, 3)))

  net, tx = Net(), optax.adam(1e-3)
  params = net.init(jax.random.key(0), x_train[:2])
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: optax.sigmoid_binary_cross_entropy(net.apply(p, x), y).mean())(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(x_train), 32)
    params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
  pred = np.asarray(jax.jit(net.apply)(params, x_test)).argmax(1)
  true, single = y_test.argmax(1), y_test.sum(1) == 1
  acc = lambda hit: 100 * hit[single].mean()  # pylint: disable=unnecessary-lambda-assignment
  print(f'{stem} {widths} patch {patch} steps {steps}: loss {float(loss):.3f}, '
        f'{single.sum()} one-object clips: class {acc(pred == true):.1f} '
        f'shape {acc(pred % 4 == true % 4):.1f} colour {acc(pred // 4 == true // 4):.1f} '
        f'({time.time() - start:.0f} s)')


if __name__ == '__main__':
  main(sys.argv[1], tuple(int(w) for w in sys.argv[2].split(',')), int(sys.argv[3]),
       *(int(a) for a in sys.argv[4:]))
