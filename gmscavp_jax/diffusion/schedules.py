"""Discrete noise schedules and the conversions between x0, eps and v predictions.

Timesteps are integers t in {0..N-1}; t = N-1 is the terminal (noisiest) step. A schedule is
alpha_bar (N,), strictly decreasing in (0, 1). At step t, with a = sqrt(alpha_bar[t]) and
s = sqrt(1 - alpha_bar[t]): x_t = a x0 + s eps and v = a eps - s x0 (Salimans & Ho 2022).
Since a^2 + s^2 = 1, (x_t, v) is a rotation of (x0, eps), which makes the v conversions
division-free.
"""

import math

import jax.numpy as jnp
import numpy as np

SCHEDULES = ('linear', 'cosine')
PREDICTIONS = ('eps', 'v')


def alpha_bar(name: str, num_steps: int) -> jnp.ndarray:
  """Cumulative signal fraction alpha_bar (N,) float32 of schedule `name` over N steps.

  'linear' is latent diffusion's "scaled linear" schedule: betas are linear in sqrt from
  sqrt(0.00085) to sqrt(0.012). 'cosine' is Nichol & Dhariwal (2021) with offset s = 0.008
  and betas clipped at 0.999 (so the terminal alpha_bar is tiny but positive).
  """
  if name not in SCHEDULES:
    raise ValueError(f'diffusion.schedule must be one of {SCHEDULES}, got {name!r}')
  if num_steps < 1:
    raise ValueError(f'a schedule needs num_steps >= 1, got {num_steps}')
  # float64 in numpy: the cumulative product over 1000 steps loses digits in float32.
  if name == 'linear':
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), num_steps, dtype=np.float64)**2
  else:
    s = 0.008
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((u + s) / (1 + s) * math.pi / 2)**2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def signal_noise(alpha_bar: jnp.ndarray,  # pylint: disable=redefined-outer-name
                 t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(a, s), each (B,) float32: sqrt(alpha_bar[t]) and sqrt(1 - alpha_bar[t]) for int t (B,)."""
  ab = jnp.asarray(alpha_bar, jnp.float32)[t]
  return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def expand_to(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """Reshapes per-example v (B,) to (B, 1, ..., 1) with the rank of x (B, ...)."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# The conversions below are elementwise; a and s are scalars or already broadcast to x
# (see `expand_to`).


def q_sample(x0, eps, a, s):
  """x_t = a x0 + s eps."""
  return a * x0 + s * eps


def x0_from_eps(x_t, eps, a, s):
  """x0 = (x_t - s eps) / a (ill-conditioned near the terminal step, where a -> 0)."""
  return (x_t - s * eps) / a


def eps_from_x0(x_t, x0, a, s):
  """eps = (x_t - a x0) / s."""
  return (x_t - a * x0) / s


def v_from_x0_eps(x0, eps, a, s):
  """v = a eps - s x0."""
  return a * eps - s * x0


def x0_from_v(x_t, v, a, s):
  """x0 = a x_t - s v."""
  return a * x_t - s * v


def eps_from_v(x_t, v, a, s):
  """eps = s x_t + a v."""
  return s * x_t + a * v


def check_prediction(prediction: str) -> None:
  """Raises ValueError unless `prediction` is 'eps' or 'v'."""
  if prediction not in PREDICTIONS:
    raise ValueError(f'diffusion.prediction must be one of {PREDICTIONS}, got {prediction!r}')


def to_x0_eps(x_t, pred, a, s, prediction: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Turns a model output `pred` (same shape as x_t) under `prediction` into (x0, eps).

  Both maps are affine in `pred` for a fixed x_t, so a classifier-free-guided output (an
  affine combination with weights summing to 1) gives the same combination of x0 and eps.
  """
  check_prediction(prediction)
  if prediction == 'eps':
    return x0_from_eps(x_t, pred, a, s), pred
  return x0_from_v(x_t, pred, a, s), eps_from_v(x_t, pred, a, s)


OBJECTIVES = ('diffusion', 'flow')


def flow_model_time(t: jnp.ndarray, num_steps: int) -> jnp.ndarray:
  """Rectified-flow time t in [0, 1] (1 = pure noise) -> the denoiser's timestep input.

  The UNets embed their timestep sinusoidally with frequencies chosen for step indices up to
  ~1000; a raw t in [0, 1] would use only the slowest of them and leave the time nearly
  unresolved. t (N - 1) spans the same range [0, N-1] as the diffusion step indices, with
  noise at N - 1 in both, so the embedding stays in its designed range. Float32, like t.
  """
  return jnp.asarray(t, jnp.float32) * (num_steps - 1)
