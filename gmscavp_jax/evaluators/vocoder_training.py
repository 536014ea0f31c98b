"""Trains the neural vocoder (models/vocoder_gan.py) once per dataset and keeps it beside the
evaluator networks: EVALUATOR_ROOT/<data.name>-<hash of data, audio, vocoder>-vocoder/
(params + vocoder.json with the training summary and the self-check against Griffin-Lim).

Training follows HiFi-GAN on random crops of `vocoder.segment_frames` log-mel frames of the
train split: for `vocoder.gan_start_step` steps the generator learns the reconstruction loss
alone (log-mel L1 at the front end's resolution plus log-STFT L1 at `vocoder.stft_sizes`),
then the discriminator joins (least-squares GAN plus feature matching).

  python -m gmscavp_jax.tools.train_vocoder --config=configs/msa_msd.py:runlocal
"""

import functools
import hashlib
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from gmscavp_jax.core import vocoder_validation
from gmscavp_jax.core import steps
from gmscavp_jax.data import audio
from gmscavp_jax.data import pipeline
from gmscavp_jax.data import vocoder
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.infra import sharding
from gmscavp_jax.losses import gan
from gmscavp_jax.models import vocoder_gan

SUMMARY_FILE = 'vocoder.json'
_MIN_POWER = 1e-12  # The pseudo-inverse's power is clipped at 0; log needs a floor.


def identity(config: ml_collections.ConfigDict) -> dict:
  """What decides a vocoder: the dataset, the audio front end and the vocoder's training
  settings (vocoder.inference_projections is how it is used, not what was trained)."""
  ident = classifier_training.identity(config)
  trained = {k: v for k, v in config.vocoder.to_dict().items() if k != 'inference_projections'}
  return {'data': ident['data'], 'audio': ident['audio'], 'vocoder': trained}


def vocoder_dir(config: ml_collections.ConfigDict, root: str | None = None) -> str:
  """EVALUATOR_ROOT/<data.name>-<12 hex digits of the identity's hash>-vocoder."""
  text = json.dumps(identity(config), sort_keys=True, default=list)
  digest = hashlib.sha256(text.encode()).hexdigest()[:12]
  return os.path.join(classifier_training.evaluator_root(root),
                      f'{config.data.name}-{digest}-vocoder')


def is_trained(config: ml_collections.ConfigDict, root: str | None = None) -> bool:
  """Whether the dataset's vocoder has been trained and saved."""
  return os.path.exists(os.path.join(vocoder_dir(config, root), SUMMARY_FILE))


def build(config: ml_collections.ConfigDict):
  """(generator, discriminator) modules of `config.vocoder`."""
  v = config.vocoder
  return (vocoder_gan.Generator(config.audio.n_fft // 2 + 1, v.width, v.num_blocks),
          vocoder_gan.Discriminator(tuple(v.periods), v.num_scales, tuple(v.disc_channels)))


def init_params(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Fresh {'generator', 'discriminator'} params for crops of vocoder.segment_frames."""
  generator, discriminator = build(config)
  g_rng, d_rng = jax.random.split(rng)
  mel = jnp.zeros((1, config.vocoder.segment_frames, config.audio.n_mels))
  wave = jnp.zeros((1, config.vocoder.segment_frames * config.audio.hop_length))
  return {'generator': generator.init(g_rng, mel)['params'],
          'discriminator': discriminator.init(d_rng, wave)['params']}


def synthesize(generator_params: dict, log_mel: jax.Array,
               config: ml_collections.ConfigDict, projections: int | None = None) -> jax.Array:
  """Waveforms (B, Ta * hop) of log-mels (B,Ta,F).

  The STFT magnitude is the mel filterbank's pseudo-inverse times exp(the generator's
  correction), the phase the generator's; `projections` Griffin-Lim projections that keep
  the magnitude (0: none; None: vocoder.projections, those trained through) make it
  consistent; the front end's inverse STFT makes it samples."""
  generator, _ = build(config)
  a = config.audio
  log_mel = jnp.clip(log_mel, np.log(a.log_floor), vocoder.MAX_LOG_MEL)
  correction, phase = generator.apply({'params': generator_params},
                                      steps.normalise_mel(log_mel, config))
  power = vocoder.linear_power(log_mel, sample_rate=a.sample_rate, n_fft=a.n_fft,
                               n_mels=a.n_mels, fmin=a.fmin, fmax=a.fmax)
  log_magnitude = 0.5 * jnp.log(jnp.maximum(power, _MIN_POWER)) + correction
  magnitude = jnp.exp(jnp.minimum(log_magnitude, 0.5 * vocoder.MAX_LOG_MEL))
  spectrum = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
  stft = functools.partial(audio.stft, n_fft=a.n_fft, win_length=a.win_length,
                           hop_length=a.hop_length)
  istft = functools.partial(audio.istft, n_fft=a.n_fft, win_length=a.win_length,
                            hop_length=a.hop_length)
  for _ in range(config.vocoder.projections if projections is None else projections):
    consistent = stft(istft(spectrum))
    # z / |z| has unbounded gradients where |z| -> 0: a floor far below audible keeps them
    # finite (an exact unit phase diverged to NaN in training).
    floor = 1e-6 * jnp.max(magnitude, axis=(-2, -1), keepdims=True)
    spectrum = magnitude * consistent / jnp.sqrt(jnp.square(jnp.abs(consistent)) + floor**2)
  return istft(spectrum)


def _crops(rng: jax.Array, wave: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """Random crops (B, segment_frames * hop) of waveforms (B,S), starting on a frame."""
  hop, frames = config.audio.hop_length, config.vocoder.segment_frames
  last = audio.num_audio_frames(wave.shape[1], hop) - frames
  starts = jax.random.randint(rng, (wave.shape[0],), 0, last + 1) * hop
  return jax.vmap(lambda w, s: jax.lax.dynamic_slice(w, (s,), (frames * hop,)))(wave, starts)


def reconstruction_loss(fake: jax.Array, real: jax.Array,
                        config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """mel_weight x log-mel L1 + stft_weight x mean log-power-STFT L1 of waveforms (B,S)."""
  v = config.vocoder
  mel_l1 = jnp.mean(jnp.abs(audio.log_mel_from_config(fake, config.audio) -
                            audio.log_mel_from_config(real, config.audio)))
  stft_l1 = []
  for n_fft, hop in v.stft_sizes:
    def log_power(x, n_fft=n_fft, hop=hop):
      s = audio.stft(x, n_fft=n_fft, win_length=n_fft, hop_length=hop)
      return jnp.log(jnp.maximum(jnp.square(s.real) + jnp.square(s.imag),
                                 config.audio.log_floor))
    stft_l1.append(jnp.mean(jnp.abs(log_power(fake) - log_power(real))))
  stft_l1 = sum(stft_l1) / max(len(stft_l1), 1)
  return v.mel_weight * mel_l1 + v.stft_weight * stft_l1, {'mel_l1': mel_l1,
                                                             'stft_l1': stft_l1}


def _optimizer(v: ml_collections.ConfigDict) -> optax.GradientTransformation:
  lr = optax.cosine_decay_schedule(v.learning_rate, max(v.num_steps, 1), 0.05)
  return optax.chain(optax.clip_by_global_norm(100.0), optax.adamw(lr, b1=0.8, b2=0.99))


def make_train_step(config: ml_collections.ConfigDict, adversarial: bool):
  """(params, opt_states, batch, rng) -> (params, opt_states, metrics): one generator update
  and, when `adversarial`, one discriminator update first (on the same fake crops)."""
  _, discriminator = build(config)
  tx = _optimizer(config.vocoder)

  def step(params, opt_states, batch, rng):
    real = _crops(rng, batch['waveform'], config)
    mel = audio.log_mel_from_config(real, config.audio)
    fake, pull_back = jax.vjp(lambda p: synthesize(p, mel, config), params['generator'])
    metrics = {}
    d_params, d_opt = params['discriminator'], opt_states['discriminator']
    if adversarial:
      def d_loss(p):
        return gan.discriminator_loss(discriminator.apply({'params': p}, real),
                                      discriminator.apply({'params': p},
                                                          jax.lax.stop_gradient(fake)))
      loss, grads = jax.value_and_grad(d_loss)(d_params)
      updates, d_opt = tx.update(grads, d_opt, d_params)
      d_params = optax.apply_updates(d_params, updates)
      metrics['disc_loss'] = loss

    def g_loss(fake):
      loss, parts = reconstruction_loss(fake, real, config)
      if adversarial:
        d_fake = discriminator.apply({'params': d_params}, fake)
        d_real = discriminator.apply({'params': d_params}, real)
        parts['adv_loss'] = gan.generator_adversarial_loss(d_fake)
        parts['feature_loss'] = gan.feature_matching_loss(d_real, d_fake)
        loss = loss + parts['adv_loss'] + config.vocoder.feature_weight * parts['feature_loss']
      return loss, parts

    (loss, parts), d_fake = jax.value_and_grad(g_loss, has_aux=True)(fake)
    grads, = pull_back(d_fake)
    updates, g_opt = tx.update(grads, opt_states['generator'], params['generator'])
    params = {'generator': optax.apply_updates(params['generator'], updates),
              'discriminator': d_params}
    return params, {'generator': g_opt, 'discriminator': d_opt}, {
        'gen_loss': loss, **parts, **metrics}

  return step


def train(config: ml_collections.ConfigDict, mesh=None) -> tuple[dict, dict]:
  """Trains the vocoder for vocoder.num_steps; returns (generator params, summary)."""
  vocoder_validation.validate_vocoder(config)
  v = config.vocoder
  mesh = mesh or sharding.make_mesh()
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  tx = _optimizer(v)
  params = jax.jit(functools.partial(init_params, config), out_shardings=repl)(
      jax.random.key(v.seed))
  opt_states = jax.jit(lambda p: {k: tx.init(x) for k, x in p.items()},
                       out_shardings=repl)(params)
  step_fns = {adv: jax.jit(make_train_step(config, adv), in_shardings=(repl, repl, batch_sh,
                                                                        repl),
                           out_shardings=(repl, repl, repl), donate_argnums=(0, 1))
              for adv in (False, True)}
  loader = iter(pipeline.train_loader(
      classifier_training.loader_config(config, v.batch_size, v.seed)))
  progress = metrics_io.Progress(0, v.num_steps)
  rng, pending, history = jax.random.key(v.seed + 1), [], []
  t0 = time.perf_counter()
  logging.info('training the vocoder (%d steps, batch %d, discriminator from step %d)',
               v.num_steps, v.batch_size, v.gan_start_step)
  for step in range(1, v.num_steps + 1):
    batch = sharding.global_batch(mesh, pipeline.select(next(loader), ('waveform',)))
    params, opt_states, metrics = step_fns[step > v.gan_start_step](
        params, opt_states, batch, jax.random.fold_in(rng, step))
    pending.append(metrics)
    if step % 100 == 0 or step == v.num_steps:
      fetched, pending = jax.device_get(pending), []
      row = {k: float(np.mean([m[k] for m in fetched if k in m])) for k in fetched[-1]}
      history.append({'step': step, **row})
      progress.update(step)
      logging.info('vocoder step %d: %s', step,
                   '  '.join(f'{k} {x:.3g}' for k, x in row.items()))
  del loader  # Stops grain's workers now, not at interpreter exit.
  return jax.device_get(params['generator']), {'train_seconds': time.perf_counter() - t0,
                                               'history': history}


def save(path: str, config: ml_collections.ConfigDict, params: dict, summary: dict) -> None:
  """Writes the generator's params and vocoder.json (with the identity) to `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  classifier_training.save_params(path, params, SUMMARY_FILE,
                                  {'identity': identity(config), **summary})


def load(config: ml_collections.ConfigDict, root: str | None = None) -> tuple[dict, dict]:
  """(generator params, vocoder.json) of the dataset's saved vocoder."""
  path = vocoder_dir(config, root)
  abstract = jax.eval_shape(functools.partial(init_params, config),
                            jax.random.key(0))['generator']
  with open(os.path.join(path, SUMMARY_FILE)) as f:
    summary = json.load(f)
  return ocp.StandardCheckpointer().restore(os.path.join(path, 'params'), abstract), summary
