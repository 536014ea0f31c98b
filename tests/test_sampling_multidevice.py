"""Sampling with the batch split over 8 fake CPU devices equals sampling on 1 device.

jax fixes its device count when it starts, so the comparison runs in a subprocess with
XLA_FLAGS set; this file is also that subprocess's script.

The denoiser is exact for correlated Gaussian data, x0 ~ N(mu, C) over the 8 values of each
(4, 2) example: E[eps | x_t] = s Q diag(1 / (a^2 c + s^2)) Q^T (x_t - a mu) with C = Q diag(c)
Q^T, a per-example matmul that mixes all dims. The noise that 'ddpm' and 'ddim' (eta > 0)
draw inside jit has the global shape; with partitionable threefry (jax's default) its values
do not depend on the sharding, so the outputs match up to float32 reordering.
"""

import json
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, fake_cpu_devices_env

CASES = (('ddpm', None), ('ddim', 0.5), ('dpmpp2m', None))


def _correlated_denoiser(alpha_bar, mu_cond, mu_uncond, cov):
  """denoise_fn(x (B,4,2), t, conditional) -> exact E[eps | x_t] under the mean of the branch."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  c, q = np.linalg.eigh(cov)
  c, q = jnp.asarray(c, jnp.float32), jnp.asarray(q, jnp.float32)

  def fn(x, t, conditional):
    mu = jnp.asarray(mu_cond if conditional else mu_uncond, jnp.float32)
    a, s = schedules.signal_noise(alpha_bar, t)
    a, s = a[:, None], s[:, None]
    r = x.reshape(x.shape[0], -1) - a * mu
    eps = s * ((r @ q) / (a**2 * c + s**2)) @ q.T
    return eps.reshape(x.shape)

  return fn


def _compare_meshes() -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.infra import sharding  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  r = np.random.default_rng(0)
  m = r.normal(size=(8, 8)) * 0.3
  cov = m @ m.T + 0.05 * np.eye(8)
  mu_cond, mu_uncond = r.normal(size=8), r.normal(size=8)
  ab = schedules.alpha_bar('linear', 1000)
  denoise = _correlated_denoiser(ab, mu_cond, mu_uncond, cov)
  x_t = r.normal(size=(16, 4, 2)).astype(np.float32)

  out = {'devices': jax.device_count()}
  for sampler, eta in CASES:
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = sharding.make_mesh(devices)
      batch, whole = sharding.batch_sharded(mesh), sharding.replicated(mesh)
      fn = jax.jit(functools.partial(samplers.sample, denoise, sampler=sampler, num_steps=20,
                                     guidance_scale=2.0, eta=eta),
                   in_shardings=(batch, whole, whole), out_shardings=batch)
      x0 = fn(jax.device_put(x_t, batch), jax.device_put(jax.random.key(7), whole),
              jax.device_put(ab, whole))
      assert len(x0.sharding.device_set) == len(devices), x0.sharding
      results.append(np.asarray(x0))
    one, eight = results
    out[sampler] = {'max_diff': float(np.max(np.abs(one - eight))),
                    'max_abs': float(np.max(np.abs(one))),
                    'moved': float(np.max(np.abs(one - x_t)))}
  return out


def test_eight_devices_match_one():
  env = fake_cpu_devices_env(8)
  r = subprocess.run([sys.executable, '-m', 'tests.test_sampling_multidevice'], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['devices'] == 8, result
  for sampler, _ in CASES:
    got = result[sampler]
    assert got['moved'] > 0.5, result  # The sampler did transform x_T.
    assert got['max_diff'] < 1e-5 * max(1.0, got['max_abs']), result


if __name__ == '__main__':
  print(json.dumps(_compare_meshes()))
