"""Scores a trained workdir with every metric of the paper (DESIGN §5): the library side of
the evaluate CLI.

Retrieval R@1/5/10 both ways over eval.num_test_clips; audio generated for the first
eval.num_metric_clips test videos, scored by KLD, FAD, Align Acc, onset F1 and class
accuracy with the dataset's evaluator networks (trained on first use, then reused: see
evaluators/classifier_training.py), beside the reference rows of evaluators/suite.py (ground
truth, ground truth through the vocoder, shuffled ground truth). Merges the numbers into
WORKDIR/results.json and writes WORKDIR/results.md (the paper's table layout),
WORKDIR/plots/evaluate.png and, to listen to, WORKDIR/audio/clipK_{generated,real}.wav for
the first eval.num_summary_clips clips through the chosen vocoder (evaluators/vocoders.py).
"""

import json
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import classifiers
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import guide_training
from gmscavp_jax.evaluators import memorisation
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import onnx_embedding
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.evaluators import suite
from gmscavp_jax.evaluators import vocoders
from gmscavp_jax.infra import plotting
from gmscavp_jax.infra import provenance


def clips_with_log_mel(config, generator: sampling.Generator, num: int, start: int,
                       split: str) -> dict:
  """`generation.test_clips` [start, start + num) of `split`, with their real log_mel
  (N,Ta,F)."""
  clips = generation.test_clips(config, num, start=start, split=split)
  clips['log_mel'] = generator.real_log_mel(clips['waveform'])
  return clips


def vocoded_waveforms(config: ml_collections.ConfigDict, log_mel: np.ndarray,
                      vocoder: vocoders.Vocoder) -> np.ndarray:
  """Log-mels (N,Ta,F) -> waveforms (N,S) by `vocoder` (as `generate` writes them), in
  batches of eval.batch_size."""
  b = config.eval.batch_size
  return np.concatenate([np.asarray(vocoder(log_mel[i:i + b], rng=jax.random.key(i)))
                         for i in range(0, len(log_mel), b)])


def vocoded_log_mel(config: ml_collections.ConfigDict, generator: sampling.Generator,
                    log_mel: np.ndarray, vocoder: vocoders.Vocoder) -> np.ndarray:
  """Log-mels (N,Ta,F) -> `vocoded_waveforms` -> log-mels (N,Ta,F) again."""
  return generator.real_log_mel(vocoded_waveforms(config, log_mel, vocoder))


def evaluate_checkpoint(workdir: str, *, evaluator_dir: str | None = None,
                        num_clips: int | None = None, sampler: str | None = None,
                        num_steps: int | None = None, guidance: float | None = None,
                        eta: float | None = None, seed: int = 0,
                        output_dir: str | None = None, split: str = 'test',
                        align_guidance: float = 0.0, vocoder: str = 'auto',
                        fad_embedding: str | None = None, fad_sample_rate: int = 16000,
                        fad_window_seconds: float = 0.96,
                        fad_hop_seconds: float | None = None,
                        retrieval_pooling: str | None = None,
                        guidance_interval: tuple[float, ...] | None = None) -> dict:
  """Scores the newest checkpoint of `workdir`; returns the merged results.json dict.

  `split` 'train' generates for (and takes the FAD reference from) training clips instead of
  test clips: the overfit check (can the generator reproduce what it trained on?); retrieval
  stays on the test split.

  The results go to `output_dir` (default: the workdir itself), merged into its
  results.json (see `_merged`: each family of keys we write replaces the old one whole):
  several settings of one checkpoint each keep their own directory. `vocoder` ('auto',
  'neural' or 'griffin_lim') makes the listening outputs and the ref/vocoded row.
  `fad_embedding`, an ONNX audio embedding network (onnx_embedding.OnnxEmbedding, with its
  input rate, window and hop), adds gen/fad_onnx and ref/gt/fad_onnx. `retrieval_pooling`
  ('segments' or 'clip', models/pyramid.py) scores retrieval another way than the run's
  eval.retrieval_pooling (e.g. a workdir trained before 'segments' existed).
  """
  output_dir = output_dir or workdir
  t0 = time.perf_counter()
  user_embedding = None  # Loaded first: a bad path or a missing onnxruntime fails at once.
  if fad_embedding:
    user_embedding = onnx_embedding.OnnxEmbedding(fad_embedding, fad_sample_rate,
                                                  fad_window_seconds, fad_hop_seconds)
  config = config_io.load_config(workdir)
  if num_clips is not None:
    config.eval.num_metric_clips = num_clips
  if retrieval_pooling is not None:
    config.eval.retrieval_pooling = retrieval_pooling
  config_validation.validate_evaluation(config)
  _, mesh, models, params, step = state_lib.restore_workdir(workdir, config,
                                                            state_lib.restore_generator)
  evalset, summary = classifier_training.load_or_train(config, evaluator_dir, mesh)
  vocode = vocoders.make(config, vocoder, evaluator_dir, mesh)

  results, emb = retrieval.RetrievalEvaluator(config, mesh, models).run(params)
  sampler_args = sampling.sampler_settings(config.eval, sampler, num_steps, guidance, eta,
                                          guidance_interval)
  generator = sampling.Generator(config, mesh, models)
  n = config.eval.num_metric_clips
  clips = clips_with_log_mel(config, generator, n, 0, split)
  reference = clips_with_log_mel(config, generator, n, n, split)
  logging.info('generating audio for %d test videos (%s, %d steps, guidance %g)', n,
               sampler_args['sampler'], sampler_args['num_steps'], sampler_args['guidance'])
  guide = {}
  if align_guidance:  # Double guidance: its own network, never the evaluator's.
    guide = {'align_guidance': align_guidance,
             'guide_params': guide_training.load_or_train(config, evaluator_dir, mesh)}
  generated, timing = generator.generate_timed(params, clips['frames'], labels=clips['labels'],
                                               seed=seed, **sampler_args, **guide)
  results.update(suite.score(evalset, generated, clips, reference,
                             generation.frame_rate(config),
                             vocoded=vocoded_log_mel(config, generator, clips['log_mel'],
                                                     vocode)))
  results.update({k: v for k, v in summary.items() if k.startswith('eval/')})
  if user_embedding is not None:
    results.update(onnx_fad(config, user_embedding, vocode, generated, clips, reference))
  suspects = None
  if config.eval.num_memorisation_clips and split == 'test':  # Train clips: nothing to test.
    check, suspects = memorisation_check(config, generator, evalset, generated, clips,
                                         reference)
    results.update(check)
  results.update({
      'gen/num_clips': float(n), 'gen/num_reference_clips': float(n),
      # Per clip at eval.batch_size clips a batch, after compiling (compile time apart).
      'gen/seconds_per_clip': timing['seconds'] / n,
      'gen/compile_seconds': timing['compile_seconds'], 'evaluate/step': step,
      'evaluate/sampler': sampler_args['sampler'], 'evaluate/split': split,
      'evaluate/griffin_lim_iters': config.eval.griffin_lim_iters,
      'evaluate/vocoder': vocode.name,
      'evaluate/sample_steps': sampler_args['num_steps'],
      'evaluate/guidance': sampler_args['guidance'], 'evaluate/seed': seed,
      'evaluate/guidance_interval': guidance_lib.interval_json(sampler_args['guidance_interval']),
      'evaluate/align_guidance': float(align_guidance),
      'evaluate/evaluator_dir': classifier_training.evaluator_dir(config, evaluator_dir),
      'evaluate/seconds': time.perf_counter() - t0})
  results.update(protocol_card(config, n, split))
  merged = _merged(output_dir, results)
  if jax.process_index() == 0:
    _write(output_dir, config, merged, generated, clips)
    if suspects is not None:
      plotting.spectrograms(
          suspects[0], os.path.join(output_dir, 'plots', 'memorisation.png'),
          'memorisation check: the generated clips nearest a training clip, and that clip',
          real=suspects[1], frame_rate=generation.frame_rate(config),
          names=('generated', 'nearest training clip'))
    _write_audio(output_dir, config, vocode, generated, clips['log_mel'])
  return merged


def memorisation_check(config: ml_collections.ConfigDict, generator: sampling.Generator,
                       evalset: classifiers.EvaluatorSet, generated: np.ndarray, clips: dict,
                       reference: dict) -> tuple[dict, tuple]:
  """`memorisation.memorisation` of the generated log-mels (N,Ta,F) against the first
  eval.num_memorisation_clips training clips, in the evaluator's embedding.

  Returns (results, (generated, nearest)): the log-mels of the 4 most suspect generated clips
  and of their nearest training clips, for the picture.
  """
  source = pipeline.make_source(config, 'train')
  num, batch = min(config.eval.num_memorisation_clips, len(source)), config.eval.batch_size
  train_mel = lambda ids: generator.real_log_mel(np.stack([source[int(i)]['waveform']
                                                           for i in ids]))
  train = np.concatenate([evalset.audio(train_mel(range(s, min(s + batch, num))))['embedding']
                          for s in range(0, num, batch)])
  embed = lambda mel: evalset.audio(mel)['embedding']
  results, details = memorisation.memorisation(
      embed(generated), embed(clips['log_mel']), embed(reference['log_mel']), train)
  worst = details['order'][:4]
  results['memorisation/num_train_clips'] = float(num)
  return results, (generated[worst], train_mel(details['train_index'][worst]))


def onnx_fad(config: ml_collections.ConfigDict, embedding: onnx_embedding.OnnxEmbedding,
             vocode: vocoders.Vocoder, generated: np.ndarray, clips: dict,
             reference: dict) -> dict:
  """FAD in a user's ONNX embedding: gen/fad_onnx (the generated log-mels (N,Ta,F) through
  `vocode` against the reference clips' real waveforms) and ref/gt/fad_onnx (the real
  waveforms of the generated clips' videos against them: the floor), and the embedding's
  settings for the protocol card."""
  rate = config.audio.sample_rate
  ref = embedding(reference['waveform'], rate)
  gen = embedding(vocoded_waveforms(config, generated, vocode), rate)
  return {'gen/fad_onnx': metrics.fad(gen, ref),
          'ref/gt/fad_onnx': metrics.fad(embedding(clips['waveform'], rate), ref),
          'evaluate/fad_embedding': embedding.identity,
          'evaluate/fad_embedding_dim': gen.shape[1],
          'evaluate/fad_embedding_sample_rate': embedding.sample_rate,
          'evaluate/fad_embedding_window_s': embedding.window / embedding.sample_rate,
          'evaluate/fad_embedding_hop_s': embedding.hop / embedding.sample_rate}


def protocol_card(config: ml_collections.ConfigDict, num_clips: int, split: str) -> dict:
  """How the numbers were made, beside the sampler keys above (evaluate/*): the evaluator
  networks' identity and embedding, the audio's rate and length, the reference set, the
  training seed and the code's commit."""
  return {
      'evaluate/dataset': config.data.name,
      'evaluate/evaluator_id': os.path.basename(
          classifier_training.evaluator_dir(config, None)),
      'evaluate/embedding': "the evaluator audio classifier's embedding layer",
      'evaluate/embedding_dim': config.evaluator.embed_dim,
      'evaluate/sample_rate': config.audio.sample_rate,
      'evaluate/clip_seconds': config.data.num_frames / config.data.fps,
      'evaluate/reference_split': f'{split} clips {num_clips}-{2 * num_clips - 1}',
      'evaluate/retrieval_pooling': config.eval.retrieval_pooling,
      'evaluate/retrieval_scale': config.eval.retrieval_scale,
      'evaluate/train_seed': config.seed,
      'evaluate/code_commit': provenance.code_commit(),
  }


def _family(key: str) -> str:
  """A results key's family: the part before the first '/' (gen, ref, retrieval, ...)."""
  return key.split('/', 1)[0]


def _merged(output_dir: str, results: dict) -> dict:
  """The saved results.json with `results` over it, family by family.

  A family that `results` writes (gen/*, ref/*, retrieval/*, ...) is replaced whole: the old
  keys of that family came from another evaluation (another checkpoint, sampler or code
  version) and would sit unmarked beside ours. Families we do not write (e.g. the trainer's
  gen_a2v/* and its step) are kept.
  """
  path = os.path.join(output_dir, 'results.json')
  old = {}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  ours = {_family(k) for k in results}
  return {**{k: v for k, v in old.items() if _family(k) not in ours}, **results}


def _write(output_dir: str, config: ml_collections.ConfigDict, merged: dict,
           generated: np.ndarray, clips: dict) -> None:
  os.makedirs(os.path.join(output_dir, 'plots'), exist_ok=True)
  path = os.path.join(output_dir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(merged, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  with open(os.path.join(output_dir, 'results.md'), 'w') as f:
    f.write(suite.results_markdown(merged, config.experiment))
  k = min(4, len(generated))
  plotting.spectrograms(
      generated[:k], os.path.join(output_dir, 'plots', 'evaluate.png'),
      f"{config.experiment} step {merged['evaluate/step']}: generated vs real "
      f"(KLD {merged['gen/kld']:.2f}, FAD {merged['gen/fad']:.2f}, "
      f"Align Acc {merged['gen/align_acc']:.1f}%)", real=clips['log_mel'][:k],
      frame_rate=generation.frame_rate(config), onsets=generation.first(clips['onsets'], k))


def _write_audio(output_dir: str, config: ml_collections.ConfigDict, vocode: vocoders.Vocoder,
                 generated: np.ndarray, real: np.ndarray) -> None:
  """OUTPUT/audio/clipK_generated.wav and clipK_real.wav (the real log-mel through the same
  vocoder) for the first eval.num_summary_clips clips."""
  k = min(config.eval.num_summary_clips, len(generated))
  if not k:
    return
  for kind, mels in (('generated', generated[:k]), ('real', real[:k])):
    for i, wave in enumerate(np.asarray(vocode(mels, rng=jax.random.key(0)))):
      media_writing.write_wav(os.path.join(output_dir, 'audio', f'clip{i}_{kind}.wav'), wave,
                              config.audio.sample_rate)
