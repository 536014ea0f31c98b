"""Prepares a real dataset: a folder of videos + its metadata -> ArrayRecord shards (DESIGN §7).

  python -m gmscavp_jax.prepare --layout=vggsound --videos=VGG/VIDEOS --csv=VGG/vggsound.csv \
      --data_dir=DATA --config=configs/msa_msd.py:runlocal --workers=16
  python -m gmscavp_jax.main --config=configs/msa_msd.py:runlocal --workdir=W \
      --config.data.name=vggsound --config.data.data_dir=DATA

Layouts (--layout, --videos, --csv; details in data/prepare/layouts.py):
  vggsound  --csv=FILE of `ytid,start_seconds,label,split`; VIDEOS/<ytid>_<start:06d>.mp4
  audioset  --csv=train=balanced_train_segments.csv,test=eval_segments.csv[,labels=
            class_labels_indices.csv] (the official segment CSVs); VIDEOS/<YTID>_<start:06d>.*
  generic   every video under VIDEOS; optional --csv of `path,label,split`; without it the
            label is the top-level folder and --test_percent of the files (by a hash of the
            path) form the test split. Panda70M-style collections use this layout.

Clips are decoded at the geometry of --config (data.num_frames, data.fps, data.image_size,
audio.sample_rate), or of --num_frames/--fps/--image_size/--sample_rate (which also override
the config's), into DATA_DIR/NAME/CONFIG/VERSION (CONFIG e.g. 16f_8fps_64px_8000hz), so a
training config with the same geometry finds it. NAME is --name (default: the layout).

Bad files (missing, empty, not media, truncated, no audio, too short, ...) are skipped; the
summary prints their counts per reason, and DATA_DIR/NAME/CONFIG/prepare_report.json and
.txt list every one (file, split, reason). The --workers processes write decoded chunks of
--chunk_size clips atomically: run the same command again after a crash or a kill and it
decodes only the chunks that are missing. A dataset already built is left as it is (delete
DATA_DIR/NAME/CONFIG to build it again).

--benchmark prepares into a temporary directory (videos of the synthetic benchmark rendered
at the geometry, or the first --benchmark_clips of --videos) and prints the decode speed in
clips/s per worker, then the examples/s of a grain loader reading the ArrayRecord shards.

Many machines: TFDS's Apache Beam support runs the same builder on a Beam cluster (Dataflow,
Flink, Spark) instead of the local worker pool. `pip install apache-beam[gcp]` (not a
dependency of this package), put VIDEOS where every worker reads it at the same path (e.g. a
shared or gcsfuse mount) and DATA_DIR where tfds writes from everywhere (gs://...), then:

  python -m gmscavp_jax.prepare --layout=audioset --videos=/mnt/audioset/videos \
      --csv=train=/mnt/audioset/unbalanced_train_segments.csv,test=/mnt/audioset/eval_segments.csv \
      --data_dir=gs://BUCKET/tfds --config=configs/msa_msd.py \
      --beam_options="--runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://BUCKET/tmp --requirements_file=requirements.txt"

The builder's _generate_examples then returns a Beam PTransform that decodes each clip on the
workers (tfds.download.DownloadConfig(beam_options=...) routes the build through Beam);
bad files are counted in the job's metrics (namespace 'bad_files', one counter per reason)
and logged by the workers. `--beam_options=--runner=DirectRunner --direct_num_workers=8`
runs the same pipeline on one machine. The item list travels inside the pipeline
(beam.Create), so a list of millions of clips makes a large job graph. This path is not
exercised by the tests (Beam is not installed here); its decoding is the same function as
the local path's.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from gmscavp_jax import cli
from gmscavp_jax.data import builders
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.tools import prepare_bench
from gmscavp_jax.data.prepare import preparation

_LAYOUT = flags.DEFINE_enum('layout', None, list(layouts.LAYOUTS), 'Layout of the videos.')
_VIDEOS = flags.DEFINE_string('videos', None, 'Folder of the video files.')
_CSV = flags.DEFINE_string('csv', None, 'Metadata CSV(s) of the layout (see above).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory to write into.')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1,
                                'Decoding processes (0: decode in this process).')
_NAME = flags.DEFINE_string('name', None, 'Dataset name (lower_snake_case; default: layout).')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config whose data.* and audio.sample_rate give the geometry.')
_GEOMETRY = {
    'num_frames': flags.DEFINE_integer('num_frames', None, 'Frames per clip (T).'),
    'fps': flags.DEFINE_float('fps', None, 'Frame rate the video is resampled to.'),
    'image_size': flags.DEFINE_integer('image_size', None, 'Frame side H = W in pixels.'),
    'sample_rate': flags.DEFINE_integer('sample_rate', None, 'Audio sample rate in Hz.'),
}
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 32, 'Clips per decoded chunk (the unit of '
                                   'work and of resuming).')
_TEST_PERCENT = flags.DEFINE_float('test_percent', 5.0, 'generic layout without a split '
                                   'column: share of files in the test split.')
_KEEP_DECODED = flags.DEFINE_bool('keep_decoded', False, 'Keep the decoded chunks after the '
                                  'build (they take as much space as the dataset).')
_BEAM_OPTIONS = flags.DEFINE_string('beam_options', None, 'Build with Apache Beam and these '
                                    'pipeline options instead of the local workers.')
_BENCHMARK = flags.DEFINE_bool('benchmark', False, 'Measure decode and grain read speed.')
_BENCH_CLIPS = flags.DEFINE_integer('benchmark_clips', 64, 'Clips the benchmark prepares.')
_BENCH_BATCHES = flags.DEFINE_integer('benchmark_batches', 50, 'Timed grain batches.')
_BENCH_BATCH = flags.DEFINE_integer('benchmark_batch_size', 8, 'grain batch size.')
_GRAIN_WORKERS = flags.DEFINE_integer('grain_workers', 2, 'grain worker processes (0: none).')


def geometry() -> builders.ClipsConfig:
  """The clip geometry from --config, overridden by --num_frames/--fps/... flags."""
  values = {}
  if _CONFIG.value is not None:
    d = _CONFIG.value.data
    values = dict(num_frames=d.num_frames, fps=d.fps, image_size=d.image_size,
                  sample_rate=_CONFIG.value.audio.sample_rate)
  values.update({k: f.value for k, f in _GEOMETRY.items() if f.value is not None})
  missing = [f'--{k}' for k in _GEOMETRY if k not in values]
  if missing:
    raise app.UsageError(f'the clip geometry needs --config=configs/NAME.py[:VARIANT] or '
                         f'{", ".join(missing)}')
  try:
    return builders.clips_config(**values)
  except ValueError as e:
    raise app.UsageError(f'clip geometry: {e}') from e


def benchmark(config: builders.ClipsConfig) -> None:
  """Prints decode clips/s per worker and grain examples/s (see prepare_bench.run)."""
  dataset = None
  if _VIDEOS.value:
    dataset = layouts.load(_LAYOUT.value or 'generic', _VIDEOS.value, _CSV.value,
                           test_percent=_TEST_PERCENT.value)
  prepare_bench.run(config, dataset, num_clips=_BENCH_CLIPS.value, workers=_WORKERS.value,
                    chunk_size=_CHUNK_SIZE.value, batch_size=_BENCH_BATCH.value,
                    num_batches=_BENCH_BATCHES.value, grain_workers=_GRAIN_WORKERS.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.run_or_explain(cli.check_paths, dirs={'videos': _VIDEOS.value})
  try:
    config = geometry()
    if _BENCHMARK.value:
      benchmark(config)
      return
    for flag in ('layout', 'videos', 'data_dir'):
      if not flags.FLAGS[flag].value:
        raise app.UsageError(f'--{flag} is required')
    cli.run_or_explain(cli.check_paths, write_dirs={'data_dir': _DATA_DIR.value})
    name = _NAME.value or _LAYOUT.value
    try:
      builders.check_name(name)
    except ValueError as e:
      raise app.UsageError(f'--name: {e}') from e
    dataset = layouts.load(_LAYOUT.value, _VIDEOS.value, _CSV.value,
                           test_percent=_TEST_PERCENT.value)
    if _BEAM_OPTIONS.value:
      path = preparation.prepare_with_beam(dataset, data_dir=_DATA_DIR.value, name=name,
                                           config=config, beam_options=_BEAM_OPTIONS.value)
      print(f'prepared with Beam: {path}')
      return
    report = preparation.prepare(dataset, data_dir=_DATA_DIR.value, name=name, config=config,
                                 workers=_WORKERS.value, chunk_size=_CHUNK_SIZE.value,
                                 keep_decoded=_KEEP_DECODED.value)
  except (layouts.LayoutError, preparation.PrepareError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  if report['already_prepared']:
    print(f'already prepared: {report["dataset_dir"]} (delete '
          f'{os.path.dirname(report["dataset_dir"])} to prepare it again)')
  if 'clips' in report:
    print(preparation.summary(report))
  # Training reads data.num_classes and eval.num_test_clips from the set (core/preflight.py).
  read = (f'its {len(dataset.classes)} classes and whole test split are' if dataset.classes
          else 'its whole test split is')
  print(f'report: {report["report"]} (and .txt)\ndataset: {report["dataset_dir"]}\n'
        f'train with: --config.data.name={name} --config.data.data_dir={_DATA_DIR.value}\n'
        f'  ({read} read from it)', flush=True)


if __name__ == '__main__':
  cli.run(main)
