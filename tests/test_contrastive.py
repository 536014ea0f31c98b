"""MSA loss (eq. 3-5) against closed forms and an independent numpy CAVP InfoNCE."""

import functools
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from gmscavp_jax.losses import contrastive


def _random_scales(seed, b=4, pools_t=(4, 2, 1), s=(2, 1, 1), d=8):
  rng = np.random.default_rng(seed)
  audio = [jnp.asarray(rng.normal(size=(b, t, 1, d)), jnp.float32) for t in pools_t]
  video = [jnp.asarray(rng.normal(size=(b, t, si, d)), jnp.float32)
           for t, si in zip(pools_t, s)]
  return audio, video


def _orthonormal_pairs(b, t, d):
  """Audio = video = distinct standard basis vectors for every (clip, segment)."""
  e = np.eye(d, dtype=np.float32)[:b * t].reshape(b, t, 1, d)
  return jnp.asarray(e), jnp.asarray(e)


def _numpy_cavp(a, v, tau):
  """CAVP clip-level symmetric InfoNCE, written from scratch: a, v (B, D)."""
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  logits = a @ v.T / tau
  diag = np.diag(logits)
  a2v = np.mean(logsumexp(logits, axis=1) - diag)
  v2a = np.mean(logsumexp(logits, axis=0) - diag)
  return 0.5 * (a2v + v2a)


class MsaLossTest(chex.TestCase, parameterized.TestCase):

  def _loss(self, *args, **kwargs):
    kwargs.setdefault('adaptive_weights', True)
    kwargs.setdefault('adaptive_temperature', 0.1)
    kwargs.setdefault('adaptive_stop_gradient', True)
    fn = self.variant(functools.partial(contrastive.msa_loss, **kwargs))
    return fn(*args)

  def test_segment_embeddings(self):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5, 6)), jnp.float32)
    e = contrastive.segment_embeddings(x)
    chex.assert_shape(e, (3, 4, 6))
    np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(e[1, 2] * jnp.linalg.norm(x[1, 2].mean(0)), x[1, 2].mean(0),
                               rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_aligned_orthonormal_pairs_reach_the_closed_form(self):
    b, t, tau = 4, 3, 0.1
    n = b * t
    a, v = _orthonormal_pairs(b, t, 16)
    loss, metrics = self._loss([a], [v], jnp.array([tau]))
    # Cosine 1 with the positive and 0 with the n-1 negatives, both directions.
    expected = np.log1p((n - 1) * np.exp(-1.0 / tau))
    np.testing.assert_allclose(loss, expected, rtol=1e-3, atol=2e-6)
    # Lower bound over all unit vectors: negatives at best reach cosine -1/(n-1) (simplex).
    bound = np.log1p((n - 1) * np.exp(-(1.0 + 1.0 / (n - 1)) / tau))
    self.assertLessEqual(bound, float(loss) + 1e-7)
    self.assertLess(float(loss) - bound, 5e-4)
    np.testing.assert_allclose(metrics['acc_a2v/scale0'], 1.0)
    # Swapping the video of clips breaks the pairs: the loss must rise.
    perm = jnp.array([1, 2, 3, 0])
    shuffled, _ = self._loss([a], [v[perm]], jnp.array([tau]))
    self.assertGreater(float(shuffled), float(loss) + 1.0)
    # Swapping segments inside every clip (temporal misalignment) must rise it too.
    shifted, _ = self._loss([a], [jnp.roll(v, 1, axis=1)], jnp.array([tau]))
    self.assertGreater(float(shifted), float(loss) + 1.0)

  @chex.variants(with_jit=True)
  def test_uniform_adaptive_weights_equal_unweighted_loss(self):
    audio, video = _random_scales(1)
    temps = jnp.array([0.1, 0.2, 0.3])
    plain, _ = self._loss(audio, video, temps, adaptive_weights=False)
    flat, _ = self._loss(audio, video, temps, adaptive_temperature=1e9)
    np.testing.assert_allclose(flat, plain, rtol=1e-5)
    # Aligned pairs have identical per-segment similarities: weights are uniform too.
    a, v = _orthonormal_pairs(2, 4, 8)
    w_on, _ = self._loss([a], [v], jnp.array([0.1]))
    w_off, _ = self._loss([a], [v], jnp.array([0.1]), adaptive_weights=False)
    np.testing.assert_allclose(w_on, w_off, rtol=1e-6)
    # Sharp adaptive weights do change a random loss (the weighting is live).
    sharp, _ = self._loss(audio, video, temps, adaptive_temperature=0.01)
    self.assertGreater(abs(float(sharp) - float(plain)), 1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_level_scale_is_cavp_infonce(self):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 1, 1, 5)).astype(np.float32)
    v = rng.normal(size=(6, 1, 3, 5)).astype(np.float32)
    tau = 0.07
    loss, metrics = self._loss([jnp.asarray(a)], [jnp.asarray(v)], jnp.array([tau]))
    expected = _numpy_cavp(a[:, 0, 0], v[:, 0].mean(axis=1), tau)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss/scale0'], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics['temperature/scale0'], tau, rtol=1e-6)

  @chex.variants(with_jit=True)
  def test_video_negatives_join_only_the_audio_to_video_softmax(self):
    """One extra candidate per audio: its own clip's negative video (the hue negative)."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(6, 1, 1, 5)).astype(np.float32)
    v, n = (rng.normal(size=(6, 1, 2, 5)).astype(np.float32) for _ in range(2))
    tau = 0.1
    loss, metrics = self._loss([jnp.asarray(a)], [jnp.asarray(v)], jnp.array([tau]),
                               video_negatives=[jnp.asarray(n)])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    ua, uv, un = unit(a[:, 0, 0]), unit(v[:, 0].mean(axis=1)), unit(n[:, 0].mean(axis=1))
    logits, neg = ua @ uv.T / tau, np.sum(ua * un, axis=-1) / tau
    pos = np.diag(logits)
    a2v = logsumexp(np.concatenate([logits, neg[:, None]], axis=1), axis=1) - pos
    v2a = logsumexp(logits, axis=0) - pos
    np.testing.assert_allclose(loss, np.mean(0.5 * (a2v + v2a)), rtol=1e-5)
    np.testing.assert_allclose(metrics['acc_hue/scale0'], np.mean(pos > neg))
    plain, plain_metrics = self._loss([jnp.asarray(a)], [jnp.asarray(v)], jnp.array([tau]))
    self.assertGreater(float(loss), float(plain))
    self.assertNotIn('acc_hue/scale0', plain_metrics)
    with self.assertRaisesRegex(ValueError, '1 video scales but 2 video negatives'):
      self._loss([jnp.asarray(a)], [jnp.asarray(v)], jnp.array([tau]),
                 video_negatives=[jnp.asarray(n)] * 2)

  def test_cross_time_loss_pairs_each_audio_window_with_the_video_half_a_clip_away(self):
    rng = np.random.default_rng(6)
    a = rng.normal(size=(5, 4, 1, 3)).astype(np.float32)
    v = rng.normal(size=(5, 4, 2, 3)).astype(np.float32)
    tau = 0.2
    loss, acc = jax.jit(contrastive.cross_time_loss)(jnp.asarray(a), jnp.asarray(v),
                                                     jnp.asarray(tau))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    ua, uv = unit(a[:, :, 0]), unit(v.mean(axis=2))
    want, hits = [], []
    for t in range(4):
      # (B, B): the candidates are every clip's video at the same offset, never the same
      # clip's other segments (L_MSA's aligned pairs are not pushed apart).
      logits = ua[:, t] @ uv[:, (t + 2) % 4].T / tau
      pos = np.diag(logits)
      want.append(0.5 * (logsumexp(logits, axis=1) - pos + logsumexp(logits, axis=0) - pos))
      hits.append(np.argmax(logits, axis=1) == np.arange(5))
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
    np.testing.assert_allclose(acc, np.mean(hits))
    with self.assertRaisesRegex(ValueError, '2 or more segments'):
      contrastive.cross_time_loss(jnp.asarray(a[:, :1]), jnp.asarray(v[:, :1]),
                                  jnp.asarray(tau))

  @chex.variants(with_jit=True)
  def test_scale_weights_and_metrics(self):
    audio, video = _random_scales(3)
    temps = jnp.array([0.1, 0.2, 0.3])
    loss, metrics = self._loss(audio, video, temps, scale_weights=(2.0, 0.5, 0.0))
    per_scale = [metrics[f'loss/scale{l}'] for l in range(3)]
    np.testing.assert_allclose(loss, 2.0 * per_scale[0] + 0.5 * per_scale[1], rtol=1e-5)
    default, _ = self._loss(audio, video, temps)
    empty, _ = self._loss(audio, video, temps, scale_weights=())
    np.testing.assert_allclose(default, sum(per_scale), rtol=1e-5)
    np.testing.assert_allclose(empty, default, rtol=1e-6)
    for l in range(3):
      self.assertBetween(float(metrics[f'acc_a2v/scale{l}']), 0.0, 1.0)
      np.testing.assert_allclose(metrics[f'temperature/scale{l}'], temps[l])

  @parameterized.parameters(True, False)
  def test_gradients_are_finite(self, stop_gradient):
    audio, video = _random_scales(4)
    # A zero segment is the worst case for the normalisation.
    audio[0] = audio[0].at[0, 0].set(0.0)

    def f(audio, video, temps):
      return contrastive.msa_loss(audio, video, temps, adaptive_weights=True,
                                  adaptive_temperature=0.1,
                                  adaptive_stop_gradient=stop_gradient)[0]

    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(audio, video, jnp.array([0.1, 0.2, 0.3]))
    chex.assert_tree_all_finite(grads)
    self.assertGreater(float(jnp.abs(grads[2]).sum()), 0.0)

  def test_batch_sharded_inputs_give_the_global_loss(self):
    """Negatives span the global batch when inputs are sharded over 4 (fake) devices."""
    code = textwrap.dedent("""
        import os
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                   ' --xla_force_host_platform_device_count=4')
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from gmscavp_jax.losses import contrastive
        rng = np.random.default_rng(0)
        a = [jnp.asarray(rng.normal(size=(8, t, 1, 6)), jnp.float32) for t in (2, 1)]
        v = [jnp.asarray(rng.normal(size=(8, t, 1, 6)), jnp.float32) for t in (2, 1)]
        fn = jax.jit(lambda a, v: contrastive.msa_loss(
            a, v, jnp.array([0.1, 0.1]), adaptive_weights=True,
            adaptive_temperature=0.1, adaptive_stop_gradient=True)[0])
        mesh = Mesh(np.array(jax.devices()), ('data',))
        shard = NamedSharding(mesh, P('data'))
        sa, sv = jax.device_put(a, shard), jax.device_put(v, shard)
        np.testing.assert_allclose(fn(sa, sv), fn(a, v), rtol=1e-5)
        print('OK', len(jax.devices()))
        """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.assertIn('OK 4', out.stdout, out.stderr[-2000:])


if __name__ == '__main__':
  absltest.main()
