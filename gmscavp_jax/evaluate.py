"""Evaluates a trained workdir with every metric of the paper (DESIGN §5).

  python -m gmscavp_jax.evaluate --workdir=/tmp/gmscavp_msa_msd [--sampler=ddim --steps=50] \
      [--num_clips=N] [--output_dir=DIR]

Retrieval R@1/5/10 both ways over eval.num_test_clips; audio generated for the first
eval.num_metric_clips test videos, scored by KLD, FAD, Align Acc, onset F1 and class
accuracy with the dataset's evaluator networks (trained on first use, then reused: see
evaluators/classifier_training.py). Merges the numbers into WORKDIR/results.json and writes
WORKDIR/results.md (the paper's table layout), WORKDIR/plots/evaluate.png and
WORKDIR/audio/*.wav to listen to (--vocoder: the dataset's neural vocoder or Griffin-Lim).
"""

import os

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.evaluators import checkpoint_evaluation
from gmscavp_jax.evaluators import sync_offset

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_SAMPLER_FLAGS = cli.define_sampler_flags()
_NUM_CLIPS = flags.DEFINE_integer('num_clips', None,
                                  'Test videos to generate for (default: eval.num_metric_clips).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sampling noise.')
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Where results.json, results.md and plots/evaluate.png go (default: '
    'the workdir); one per setting keeps several evaluations of one checkpoint apart.')
_SPLIT = flags.DEFINE_enum(
    'split', 'test', ['test', 'train'], 'Clips to generate for: test, or train for the overfit '
    'check (does the generator reproduce the clips it trained on?).')
_ALIGN_GUIDANCE = flags.DEFINE_float(
    'align_guidance', 0.0, 'Double guidance: scale of the alignment guide\'s gradient added to '
    'classifier-free guidance (0 = off; the guide trains once per dataset on first use).',
    lower_bound=0.0)
_VOCODER = cli.define_vocoder_flag()
_FAD_EMBEDDING = flags.DEFINE_string(
    'fad_embedding', None, 'An ONNX audio embedding network (input: float32 (batch, window '
    "samples)) for a FAD comparable with the literature's (gen/fad_onnx); needs "
    "pip install -e '.[onnx]'.")
_FAD_SAMPLE_RATE = flags.DEFINE_integer('fad_sample_rate', 16000,
                                        "--fad_embedding's input sample rate (Hz).")
_FAD_WINDOW = flags.DEFINE_float('fad_window_seconds', 0.96,
                                 "--fad_embedding's input window in seconds.")
_FAD_HOP = flags.DEFINE_float('fad_hop_seconds', None,
                              'Hop between --fad_embedding windows (default: the window).')
_RETRIEVAL_POOLING = flags.DEFINE_enum(
    'retrieval_pooling', None, ['segments', 'clip'], 'How retrieval scores a pair (default: '
    "the run's eval.retrieval_pooling): segments, the mean cosine of time-aligned segments; "
    'clip, the cosine of clip means (timing-blind).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value},
                     write_dirs={'output_dir': _OUTPUT_DIR.value},
                     files={'fad_embedding': _FAD_EMBEDDING.value})
  cli.setup()
  r = cli.run_or_explain(
      checkpoint_evaluation.evaluate_checkpoint, _WORKDIR.value,
      evaluator_dir=_EVALUATOR_DIR.value, num_clips=_NUM_CLIPS.value, seed=_SEED.value,
      output_dir=_OUTPUT_DIR.value, split=_SPLIT.value, align_guidance=_ALIGN_GUIDANCE.value,
      vocoder=_VOCODER.value, fad_embedding=_FAD_EMBEDDING.value,
      fad_sample_rate=_FAD_SAMPLE_RATE.value, fad_window_seconds=_FAD_WINDOW.value,
      fad_hop_seconds=_FAD_HOP.value, retrieval_pooling=_RETRIEVAL_POOLING.value,
      **cli.sampler_args(_SAMPLER_FLAGS))
  print(f"checkpoint {r['evaluate/step']}: KLD {r['gen/kld']:.3f}  FAD {r['gen/fad']:.3f} "
        f"[{r['gen/fad_ci95_low']:.2f}, {r['gen/fad_ci95_high']:.2f}] (FAD-inf "
        f"{r['gen/fad_inf']:.2f})  "
        f"Align Acc {r['gen/align_acc']:.1f}%  onset F1@100ms {r['gen/onset_f1@100ms']:.1f}% "
        f"(precision {r['gen/onset_precision@100ms']:.1f}%, recall "
        f"{r['gen/onset_recall@100ms']:.1f}%)"
        f"  v2a R@1 {r['retrieval/v2a_R@1']:.2f}%  a2v R@1 {r['retrieval/a2v_R@1']:.2f}% "
        f"(timing-blind ceiling {r['retrieval/ceiling_R@1']:.2f}%, class-only "
        f"{r['retrieval/class_ceiling_R@1']:.2f}%)")
  memorised = (f"; memorised {r['gen/memorised_share']:.1f}% (real audio "
               f"{r['ref/gt/memorised_share']:.1f}%)" if 'gen/memorised_share' in r else '')
  print(f"audio-video offset {r['gen/sync_offset_abs_s']:.2f} s (ground truth "
        f"{r['ref/gt/sync_offset_abs_s']:.2f} s, moved {sync_offset.SHIFTED_SECONDS:g} s: "
        f"{r['ref/shifted/sync_offset_s']:.2f} s){memorised}; 95% intervals in results.md")
  print(f"ground truth: KLD {r['ref/gt/kld']:.3f}  FAD {r['ref/gt/fad']:.3f}  Align Acc "
        f"{r['ref/gt/align_acc']:.1f}%  onset F1@100ms {r['ref/gt/onset_f1@100ms']:.1f}%; "
        f"shuffled ground truth Align Acc {r['ref/shuffled/align_acc']:.1f}%")
  print(f"ground truth through the vocoder ({r['evaluate/vocoder']}): KLD "
        f"{r['ref/vocoded/kld']:.3f}  FAD "
        f"{r['ref/vocoded/fad']:.3f}  Align Acc {r['ref/vocoded/align_acc']:.1f}%  onset "
        f"F1@100ms {r['ref/vocoded/onset_f1@100ms']:.1f}%  class acc "
        f"{r['ref/vocoded/class_acc']:.1f}%")
  if 'gen/fad_onnx' in r:
    print(f"FAD in {r['evaluate/fad_embedding']}: generated {r['gen/fad_onnx']:.3f}, "
          f"ground truth {r['ref/gt/fad_onnx']:.3f}")
  print(f"wrote {os.path.join(_OUTPUT_DIR.value or _WORKDIR.value, 'results.json')} and "
        'results.md')


if __name__ == '__main__':
  cli.run(main)
