"""How much of the added noise a trained denoiser leaves in its x0 prediction, how rough the
audio it samples is against the real clips', and how sure the evaluator's audio classifier is
of that audio (issue 18's diagnosis, docs/results.md "The denoiser kept the noise").

  python docs/probes/denoiser_noise.py WORKDIR [NUM_CLIPS]   (default 64 test clips)

Part 1, per timestep t: the real log-mels of the first 32 test clips, normalised, noised to
x_t = a x0 + s eps with one fixed eps, and the denoiser's x0 prediction given each clip's video.
`kept` is the share of the added noise still in the prediction: the least-squares c in
x0_hat - x0 ~ c * (s / a) * eps (1: the prediction is the noisy input itself, 0: every bit of
that noise removed). For scale, a denoiser that knew each clip's smooth part exactly and its
fine texture only as white noise of the real clips' variance tau^2 (per pixel, after a 3x3
box blur is taken off) would keep tau^2 / (tau^2 + sigma^2), sigma = s / a (the Wiener gain).

Part 2: the log-mels sampled at the eval.* defaults for the first NUM_CLIPS test clips against
their real ones: the mean absolute step between neighbouring frames ('roughness') and the
power of the top quarter of the time-frequency spectrum of each mel bin's track (white noise
puts as much power there as anywhere; real audio little).

Part 3, on the first 256 test clips sampled as `evaluate` does: the classifier's accuracy
(its top class is a sounding one), KLD (metrics.kld_from_logits, as gen/kld), and the mean
entropy and top probability of its posteriors on the generated audio. KLD(real || generated)
grows when the generated posterior is sure of a wrong class, so at one accuracy a sharper
posterior scores a worse KLD.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.core import msd
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import metrics

TIMESTEPS = (0, 25, 50, 100, 175, 250, 400, 500, 750, 999)


def fine_texture(x):
  """x (N,Ta,F) minus its 3x3 box blur (edges wrap): what is left is the per-pixel texture."""
  blur = sum(jnp.roll(x, (i, j), (1, 2)) for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9
  return x - blur


def roughness(mel):
  """(mean |step between neighbouring frames|, mean power of the top quarter of the
  frequencies of each mel bin's track over time) of log-mels (N,Ta,F)."""
  power = np.abs(np.fft.rfft(mel - mel.mean(1, keepdims=True), axis=1))**2
  power = power.mean((0, 2))
  return float(np.abs(np.diff(mel, axis=1)).mean()), float(power[3 * len(power) // 4:].mean())


def main(workdir, num_clips=64):
  config, mesh, models, params, step = state_lib.restore_workdir(
      workdir, restore=state_lib.restore_generator)
  # One set of test clips, real log-mels and samples serves all three parts (part 2 reads the
  # first num_clips, part 3 the first 256).
  clips = generation.test_clips(config, max(num_clips, 256))
  generator = sampling.Generator(config, mesh, models)
  real = generator.real_log_mel(clips['waveform'])
  sampled = generator.generate(params, clips['frames'])
  n = min(32, num_clips)
  x0 = steps.normalise_mel(jnp.asarray(real[:n]), config)
  video = sampling.encode_video(params, jnp.asarray(clips['frames'][:n]), models=models)
  alpha_bar = msd.alpha_bar(config)
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  tau2 = float(jnp.mean(fine_texture(x0)**2)) / (1 - 2 / 9 + 1 / 9)  # Texture of white noise.
  apply = jax.jit(lambda x, t: models.denoiser.apply({'params': params['denoiser']}, x, t,
                                                     video))
  print(f'{workdir} (step {step}): noise kept in the x0 prediction, {n} test clips')
  print('   t  sigma  kept  Wiener  rms error')
  for t in TIMESTEPS:
    a, s = jnp.sqrt(alpha_bar[t]), jnp.sqrt(1 - alpha_bar[t])
    x_t = a * x0 + s * eps
    out = apply(x_t, jnp.full((n,), t))
    x0_hat = a * x_t - s * out if config.diffusion.prediction == 'v' else (x_t - s * out) / a
    sigma = float(s / a)
    kept = float(jnp.sum((x0_hat - x0) * eps) / jnp.sum(eps * eps)) / sigma
    rms = float(jnp.sqrt(jnp.mean((x0_hat - x0)**2)))
    print(f'{t:4d} {sigma:6.3f} {kept:5.2f} {tau2 / (tau2 + sigma**2):7.2f} {rms:10.3f}')
  for name, mel in (('real', real), ('sampled (eval.* defaults)', sampled)):
    rough, high = roughness(np.asarray(mel[:num_clips]))
    print(f'{name:>26}: roughness {rough:.2f}, top-quarter power {high:.1f}')
  evalset, _ = classifier_training.load_or_train(config, None, mesh)
  logits = [np.asarray(evalset.audio(m[:256])['logits']) for m in (sampled, real)]
  p_gen = metrics.softmax(logits[0])
  entropy = float(np.mean(-np.sum(p_gen * np.log(np.clip(p_gen, 1e-12, None)), axis=1)))
  right = clips['labels'][np.arange(len(p_gen)), p_gen.argmax(1)] > 0
  print(f'classifier on 256 sampled clips: accuracy {100 * np.mean(right):.1f} %, KLD '
        f'{metrics.kld_from_logits(logits[1], logits[0]):.2f}, posterior entropy '
        f'{entropy:.2f} nats, top probability {p_gen.max(1).mean():.2f}')


if __name__ == '__main__':
  main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
