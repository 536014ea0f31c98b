"""Batched samplers (DDPM, DDIM, DPM-Solver++(2M); Euler, Heun for flow) with classifier-free
guidance.

`sample` takes a denoise callable and never touches a model. The step loop is a
`jax.lax.scan`, so jitting `sample` traces and compiles one step whatever `num_steps` is.

All samplers visit the same K timesteps (see `timesteps`) and treat the step after the last
one as "clean" (alpha_bar = 1): the final update returns the model's x0 prediction at the
last listed timestep. This is what the DDIM update to alpha_bar = 1 gives, what the DDPM
posterior with zero variance gives, and what DPM-Solver++ gives at sigma = 0 (with a
first-order last step, as in k-diffusion), so all three end the same way.

A model trained with the rectified-flow objective (diffusion.objective 'flow',
objectives.flow_loss) is sampled by 'euler' or 'heun' (`sample_flow`), which integrate its
velocity ODE from noise at t = 1 to data at t = 0; the diffusion samplers do not apply to it,
nor these to a diffusion model (`check_objective`).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.diffusion import guidance
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.infra import errors

DIFFUSION_SAMPLERS = ('ddpm', 'ddim', 'dpmpp2m')
FLOW_SAMPLERS = ('euler', 'heun')
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
OBJECTIVE_SAMPLERS = {'diffusion': DIFFUSION_SAMPLERS, 'flow': FLOW_SAMPLERS}



class Known(NamedTuple):
  """What inpainting holds fixed: clean values x0 (B, ...) where mask (B, ...) in [0, 1] is 1.

  After every step the sample is pulled towards x0 noised to the step's level with the start
  noise (x = m (a x0 + s x_T) + (1 - m) x: replacement inpainting, Song et al. 2021, with a
  soft mask so that the join is blended), so the output equals x0 where m = 1 and the model
  fills in the rest knowing it. A window of a long soundtrack is sampled knowing the end of
  the previous one this way.
  """
  x0: jnp.ndarray
  mask: jnp.ndarray


Projector = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
# (x_t (B, ...), t (B,) int32) -> the gradient of a log-likelihood w.r.t. x_t, scaled.
GradientGuide = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _projector(known: Known | None, noise: jnp.ndarray) -> Projector:
  """project(x, a, s): x with the known part replaced by a x0 + s noise (identity if None)."""
  if known is None:
    return lambda x, a, s: x
  x0, mask = known.x0.astype(jnp.float32), known.mask.astype(jnp.float32)
  noise = noise.astype(jnp.float32)
  return lambda x, a, s: mask * (a * x0 + s * noise) + (1.0 - mask) * x


def timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """The K = num_steps timesteps a sampler visits, (K,) int32, strictly decreasing.

  K points evenly spaced on [N-1, 0] (both ends included when K >= 2; K = 1 gives [N-1]),
  rounded half up. The spacing (N-1)/(K-1) is >= 1 when K <= N, so rounding cannot merge two
  points; the terminal step N-1 is always visited, where x_T ~ N(0, I) is meant to start.
  """
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f'sampling num_steps must be in [1, {num_train_steps}] (the schedule '
                     f'length N), got {num_steps}')
  grid = np.linspace(num_train_steps - 1, 0, num_steps, dtype=np.float64)
  return np.floor(grid + 0.5).astype(np.int32)


def denoiser_calls(alpha_bar: jnp.ndarray, *, objective: str, sampler: str, num_steps: int,
                   guidance_scale: float, guidance_interval: tuple[float, ...] = ()) -> int:
  """Denoiser evaluations per clip: one per model query, two for a guided one (guidance
  other than 0 and 1, inside `guidance_interval`), whether they run as one UNet call of twice
  the batch (`guidance.BatchedDenoiser`) or two."""
  if objective == 'flow':  # The noise levels as sample_flow computes them, in float32.
    ts = jnp.asarray(flow_times(num_steps))
    queried = jnp.concatenate([ts[:-1], ts[1:-1]]) if sampler == 'heun' else ts[:-1]
    sigmas = queried / (1.0 - queried)
  else:
    sigmas = guidance.noise_level(_visits(alpha_bar, num_steps).ab_cur)
  if guidance_scale in (0.0, 1.0):
    return int(sigmas.shape[0])
  guided = guidance.guided_steps(sigmas, guidance_interval)
  return int(sigmas.shape[0]) + int(sigmas.shape[0] if guided is None else jnp.sum(guided))


def check_objective(sampler: str, objective: str) -> None:
  """Raises errors.ConfigError unless `sampler` can sample a model trained with `objective`."""
  if objective not in OBJECTIVE_SAMPLERS:
    raise errors.ConfigError(f'config.diffusion.objective={objective!r}: expected one of '
                             f'{tuple(OBJECTIVE_SAMPLERS)}')
  allowed = OBJECTIVE_SAMPLERS[objective]
  if sampler not in allowed:
    raise errors.ConfigError(f'sampler {sampler!r} (eval.sampler or --sampler) does not match '
                             f'config.diffusion.objective={objective!r}: expected one of '
                             f'{allowed}')


def _resolve_eta(sampler: str, eta: float | None) -> float:
  """The DDIM eta a sampler runs with; rejects an eta that the sampler would ignore.

  None and 0.0 (a common config default) mean "unset" for 'ddpm' and 'dpmpp2m'.
  """
  fixed = {'ddpm': 1.0, 'dpmpp2m': 0.0}
  if sampler in fixed:
    if eta not in (None, 0.0, fixed[sampler]):
      raise ValueError(f'eta={eta} is only used by the ddim sampler; {sampler!r} runs with '
                       f'eta={fixed[sampler]}')
    return fixed[sampler]
  eta = 0.0 if eta is None else float(eta)
  if eta < 0:
    raise ValueError(f'ddim eta must be >= 0, got {eta}')
  return eta


# x_T keeps the papers' name for the terminal sample.
def sample(denoise_fn: guidance.GuidedDenoiseFn, x_T: jnp.ndarray,  # pylint: disable=invalid-name
           rng: jax.Array, alpha_bar: jnp.ndarray, *, sampler: str, num_steps: int,
           prediction: str = 'eps', guidance_scale: float = 1.0, eta: float | None = None,
           clip_x0: float | None = None, known: Known | None = None,
           gradient_guide: GradientGuide | None = None,
           guidance_interval: tuple[float, ...] = ()) -> jnp.ndarray:
  """Draws x0 from x_T by integrating the reverse process over `timesteps(N, num_steps)`.

  Args:
    denoise_fn: (x (B, ...), t (B,) int32, conditional: static bool) -> model output
      (B, ...) under `prediction`; conditional=False means the learned null condition. A
      `guidance.BatchedDenoiser` makes each guided step one call at batch 2B
      (`guidance.guided_output`).
    x_T: (B, ...) start noise at step N-1 (normally N(0, I)).
    rng: key for the noise that 'ddpm' and 'ddim' with eta > 0 add; the key of step i is
      fold_in(rng, i), and draws cover the full global shape, so with jax's default
      (partitionable threefry) keys they do not depend on how the batch is sharded.
    alpha_bar: (N,) schedule the model was trained with.
    sampler: 'ddim' (eta, default 0: deterministic given x_T; eta > 0 adds eta times the
      DDPM posterior std of noise), 'ddpm' (ancestral sampling on the same subsequence: DDIM
      with eta = 1, whose per-step variance is the DDPM posterior variance between the two
      visited steps) or 'dpmpp2m' (DPM-Solver++(2M), Lu et al. 2022: second-order multistep
      on x0 predictions in lambda = log(a/s); the first and last steps are first order).
    num_steps: K visited timesteps (static), 1 <= K <= N; K guided model evaluations.
    prediction: 'eps' or 'v': what denoise_fn outputs.
    guidance_scale: static w of classifier-free guidance (see `guidance.guided_output`).
    guidance_interval: () guides every step; (lo, hi) only the steps whose noise level
      `guidance.noise_level(alpha_bar_t)` is in (lo, hi], the others run the conditional
      model alone (`guidance.guided_steps`).
    eta: DDIM stochasticity, only read by 'ddim'; the others accept None or 0.0 (unset),
      and 'ddpm' also 1.0, and raise ValueError on any other value.
    clip_x0: if set, predicted x0 is clipped to [-clip_x0, clip_x0] before each update (and
      eps recomputed from the clipped x0, so the update stays on the DDIM path).
    known: if set, inpainting (`Known`): the output keeps known.x0 where the mask is 1.
    gradient_guide: if set, classifier guidance on top of the classifier-free one (double
      guidance, Diff-Foley): at each step eps <- eps - s_t g(x_t, t) with g the scaled
      gradient of the classifier's log-likelihood (Dhariwal & Nichol 2021, eq. 14).

  Returns:
    x0 samples, same shape and dtype as x_T.
  """
  if sampler not in DIFFUSION_SAMPLERS:
    raise ValueError(f'unknown diffusion sampler {sampler!r}; allowed: {DIFFUSION_SAMPLERS} '
                     f'(flow samplers {FLOW_SAMPLERS}: sample_flow)')
  schedules.check_prediction(prediction)
  eta = _resolve_eta(sampler, eta)
  visits = _visits(alpha_bar, num_steps)
  predict = _predictor(denoise_fn, visits, x_T.shape[0], prediction, guidance_scale, clip_x0,
                       gradient_guide,
                       guidance.guided_steps(guidance.noise_level(visits.ab_cur),
                                             guidance_interval))
  project = _projector(known, x_T)
  x = project(x_T.astype(jnp.float32), jnp.sqrt(visits.ab_cur[0]),
              jnp.sqrt(1.0 - visits.ab_cur[0]))
  if sampler == 'dpmpp2m':
    x = _dpmpp2m(predict, visits, x, project)
  else:
    x = _ddim(predict, visits, x, rng, eta, project)
  return x.astype(x_T.dtype)


class _Visits(NamedTuple):
  """The schedule at the K visited steps: t (K,) int32, alpha_bar there (K,) float32 and at
  the following visited step (K,) float32, where the step after the last one is clean data
  (alpha_bar = 1)."""
  ts: jnp.ndarray
  ab_cur: jnp.ndarray
  ab_next: jnp.ndarray


def _visits(alpha_bar: jnp.ndarray, num_steps: int) -> _Visits:
  """The schedule `alpha_bar` (N,) at `timesteps(N, num_steps)`."""
  ts = jnp.asarray(timesteps(alpha_bar.shape[0], num_steps))
  ab = jnp.asarray(alpha_bar, jnp.float32)
  return _Visits(ts, ab[ts], jnp.concatenate([ab[ts[1:]], jnp.ones((1,), jnp.float32)]))


def _predictor(denoise_fn: guidance.GuidedDenoiseFn, visits: _Visits, batch: int,
               prediction: str, guidance_scale: float, clip_x0: float | None,
               gradient_guide: GradientGuide | None = None,
               guided: jnp.ndarray | None = None) -> Callable:
  """predict(x (B, ...) float32, i) -> the guided (x0, eps) at visited step i, float32
  (guided[i] says whether step i is guided; None: every step)."""

  def predict(x, i):
    t = jnp.full((batch,), visits.ts[i], jnp.int32)
    out = guidance.guided_output(denoise_fn, x, t, guidance_scale,
                        None if guided is None else guided[i]).astype(jnp.float32)
    a, s = jnp.sqrt(visits.ab_cur[i]), jnp.sqrt(1.0 - visits.ab_cur[i])
    x0, eps = schedules.to_x0_eps(x, out, a, s, prediction)
    if gradient_guide is not None:
      eps = eps - s * gradient_guide(x, t).astype(jnp.float32)
      x0 = (x - s * eps) / a
    if clip_x0 is not None:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = schedules.eps_from_x0(x, x0, a, s)
    return x0, eps

  return predict


def _ddim(predict: Callable, visits: _Visits, x: jnp.ndarray, rng: jax.Array,
          eta: float, project: Projector) -> jnp.ndarray:
  """DDIM (DDPM at eta = 1) from x (B, ...) float32 at the first visited step to x0; each
  new x goes through `project` at its own level."""

  def step(x, i):
    x0, eps = predict(x, i)
    ab_t, ab_n = visits.ab_cur[i], visits.ab_next[i]
    # Song et al. 2021 eq. 16; eta = 1 is the DDPM posterior std between the two steps, and
    # it is exactly 0 on the last step (ab_n = 1), which then returns x0.
    sigma = eta * jnp.sqrt((1.0 - ab_n) / (1.0 - ab_t) * (1.0 - ab_t / ab_n))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_n - sigma**2, 0.0))
    x_next = jnp.sqrt(ab_n) * x0 + direction * eps
    if eta > 0:
      z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, jnp.float32)
      x_next = x_next + sigma * z
    return project(x_next, jnp.sqrt(ab_n), jnp.sqrt(1.0 - ab_n)), None

  x, _ = jax.lax.scan(step, x, jnp.arange(visits.ts.shape[0]))
  return x


def _dpmpp2m(predict: Callable, visits: _Visits, x: jnp.ndarray,
             project: Projector) -> jnp.ndarray:
  """DPM-Solver++(2M) from x (B, ...) float32 at the first visited step to x0; each new x
  goes through `project` at its own level."""
  ab_cur, ab_next = visits.ab_cur, visits.ab_next
  last = visits.ts.shape[0] - 1
  # lambda = log(a/s) at each visited step. The last step's successor (s = 0) has lambda =
  # inf; it is replaced by a finite stand-in because that step returns x0 instead.
  lam = 0.5 * (jnp.log(ab_cur) - jnp.log1p(-ab_cur))
  lam_next = jnp.concatenate([lam[1:], lam[-1:] + 1.0])

  def step(carry, i):
    x, x0_prev, h_prev = carry
    x0, _ = predict(x, i)
    h = lam_next[i] - lam[i]
    # Second order: extrapolate the x0 predictions linearly in lambda (r = h_prev / h).
    half_inv_r = h / (2.0 * h_prev)
    d = jnp.where(i == 0, x0, (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev)
    a_n, s_n = jnp.sqrt(ab_next[i]), jnp.sqrt(1.0 - ab_next[i])
    s_t = jnp.sqrt(1.0 - ab_cur[i])
    x_next = (s_n / s_t) * x - a_n * jnp.expm1(-h) * d
    x_next = project(jnp.where(i == last, x0, x_next), a_n, s_n)
    return (x_next, x0, h), None

  # h_prev starts as a float32 1 (not a default-dtype one, which is float64 under
  # jax_enable_x64 and would promote the carry); step 0 ignores it.
  (x, _, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x), jnp.ones((), lam.dtype)),
                              jnp.arange(visits.ts.shape[0]))
  return x


def flow_times(num_steps: int) -> np.ndarray:
  """(K + 1,) float32 flow times 1 = t_0 > t_1 > ... > t_K = 0, evenly spaced (K = num_steps)."""
  if num_steps < 1:
    raise ValueError(f'sampling num_steps must be >= 1, got {num_steps}')
  return np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64).astype(np.float32)


def sample_flow(denoise_fn: guidance.GuidedDenoiseFn, x_1: jnp.ndarray, *, sampler: str,
                num_steps: int, num_timesteps: int, guidance_scale: float = 1.0,
                clip_x0: float | None = None, known: Known | None = None,
                guidance_interval: tuple[float, ...] = ()) -> jnp.ndarray:
  """Draws x0 from noise x_1 by integrating a rectified-flow velocity from t = 1 to t = 0.

  Args:
    denoise_fn: (x (B, ...), model time (B,) float32, conditional: static bool) -> velocity
      eps - x0 (B, ...); the model time is schedules.flow_model_time(t, num_timesteps), as in
      training (objectives.flow_loss).
    x_1: (B, ...) start noise at t = 1 (normally N(0, I)).
    sampler: 'euler' (K velocity evaluations) or 'heun' (Heun's second-order method: each
      step averages the velocity at both of its ends; the last step, to t = 0, is an Euler
      step, as in Karras et al. 2022's Algorithm 1, so the model is never queried at t = 0,
      where logit-normal training put almost no weight: 2K - 1 evaluations).
    num_steps: K >= 1 steps on the even grid `flow_times(K)` (static).
    num_timesteps: N (diffusion.num_timesteps), the scale of the model time.
    guidance_scale: static w of classifier-free guidance on the velocity
      (`guidance.guided_output`; at a fixed x_t, x0 and eps are affine in it, so this is the
      same guidance on them).
    clip_x0: if set, the predicted x0 = x - t v is clipped to [-clip_x0, clip_x0] and the
      velocity recomputed from it, (x - x0) / t (t > 0 wherever the model is queried).
    guidance_interval: as in `sample`, on the flow's noise level t / (1 - t) (x_t =
      (1 - t) x0 + t x_1).
    known: if set, inpainting (`Known`; x_t = (1 - t) x0 + t x_1 on the flow's path).

  Returns:
    x0 samples, same shape and dtype as x_1.
  """
  if sampler not in FLOW_SAMPLERS:
    raise ValueError(f'unknown flow sampler {sampler!r}; allowed: {FLOW_SAMPLERS}')
  ts = jnp.asarray(flow_times(num_steps))
  batch = x_1.shape[0]
  project = _projector(known, x_1)

  def velocity(x, t):
    model_t = jnp.full((batch,), schedules.flow_model_time(t, num_timesteps), jnp.float32)
    # t / (1 - t) is inf at t = 1, outside every finite interval.
    guided = guidance.guided_steps(t / (1.0 - t), guidance_interval)
    v = guidance.guided_output(denoise_fn, x, model_t, guidance_scale,
                               guided).astype(jnp.float32)
    if clip_x0 is not None:
      x0 = jnp.clip(x - t * v, -clip_x0, clip_x0)
      v = (x - x0) / t
    return v

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    v = velocity(x, t)
    x_next = x + (t_next - t) * v
    if sampler == 'heun':
      x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, t_next))
    return project(x_next, 1.0 - t_next, t_next), None

  x = x_1.astype(jnp.float32)
  # Heun's steps all end at t > 0 but the last; that one is the Euler step below.
  x, _ = jax.lax.scan(step, x, jnp.arange(num_steps - 1))
  x = x + (ts[-1] - ts[-2]) * velocity(x, ts[-2])
  return project(x, 1.0, 0.0).astype(x_1.dtype)


def sample_objective(denoise_fn: guidance.GuidedDenoiseFn,
                     x_T: jnp.ndarray,  # pylint: disable=invalid-name
                     rng: jax.Array, alpha_bar: jnp.ndarray, *, objective: str, sampler: str,
                     num_steps: int, prediction: str = 'eps', guidance_scale: float = 1.0,
                     eta: float | None = None, clip_x0: float | None = None,
                     known: Known | None = None,
                     gradient_guide: GradientGuide | None = None,
                     guidance_interval: tuple[float, ...] = ()) -> jnp.ndarray:
  """`sample` for objective 'diffusion', `sample_flow` for 'flow' (N = alpha_bar's length).

  Raises errors.ConfigError if `sampler` does not belong to `objective` (`check_objective`),
  and ValueError for an eta other than None or 0 with a flow sampler (both are deterministic).
  """
  check_objective(sampler, objective)
  if objective == 'diffusion':
    return sample(denoise_fn, x_T, rng, alpha_bar, sampler=sampler, num_steps=num_steps,
                  prediction=prediction, guidance_scale=guidance_scale, eta=eta,
                  clip_x0=clip_x0, known=known, gradient_guide=gradient_guide,
                  guidance_interval=guidance_interval)
  if gradient_guide is not None:
    raise errors.ConfigError('gradient (alignment) guidance is written for the diffusion '
                             "samplers; diffusion.objective='flow' has none")
  if eta not in (None, 0.0):
    raise ValueError(f'eta={eta} is only used by the ddim sampler; {sampler!r} is deterministic')
  return sample_flow(denoise_fn, x_T, sampler=sampler, num_steps=num_steps,
                     num_timesteps=alpha_bar.shape[0], guidance_scale=guidance_scale,
                     clip_x0=clip_x0, known=known, guidance_interval=guidance_interval)
