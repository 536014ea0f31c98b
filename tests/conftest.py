"""Shared test fixtures: tiny configs that train in seconds on a CPU."""

import contextlib
import fcntl
import functools
import importlib
import json
import os
import pathlib
import shutil
import sys

# Tests import configs/ and the package from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Tests check what the code computes, not how fast, and compiling is most of the suite's
# time: XLA:CPU's backend optimisation level 0 compiles the tiny train step in about half the
# time (init 36-47 s -> 7-22 s, step 40-83 s -> 27-51 s on 2 busy cores, interleaved runs),
# and its older loop emitters instead of the fusion emitters take a quarter off what is left
# (test_steps, test_flow and test_gpu_suite: 82 -> 60 s, cold cache, idle cores). Set before
# jax starts its backend; every subprocess a test starts inherits it, and `xla_flags` gives
# it to those that set XLA_FLAGS themselves.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

from configs import common  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# One persistent compilation cache for every test process (xdist workers and the CLIs the
# tests start): tests that build the same tiny programs compile them once per run.
CACHE = os.environ.setdefault('GMSCAVP_COMPILATION_CACHE',
                              os.path.join(ROOT, '.pytest_cache', 'xla'))
jax.config.update('jax_compilation_cache_dir', CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a subprocess: `flags` and the suite's TEST_XLA_FLAGS."""
  return ' '.join(flags + (TEST_XLA_FLAGS,))


def fake_cpu_devices_env(num_devices: int) -> dict:
  """The environment of a subprocess whose jax sees `num_devices` CPU devices.

  The fake devices are threads on a 2-core machine shared with another test worker; XLA
  aborts a collective when one thread arrives more than 40 s after the rest, which heavy
  load can cause, so that limit is raised to 10 minutes. The persistent compilation cache
  is off: with jaxlib 0.10.2, an 8-device CPU program with collectives read back from it
  deadlocks (the device threads wait in different all-gathers of one execution), every
  time, while the same program freshly compiled runs (see cli.setup).
  """
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_ENABLE_COMPILATION_CACHE='false',
              XLA_FLAGS=xla_flags(f'--xla_force_host_platform_device_count={num_devices}',
                                  '--xla_cpu_collective_call_terminate_timeout_seconds=600'))


def init_state(config, models, txs, seed: int = 0):
  """`steps.init_state` jitted: one compile, kept in the persistent cache, where the eager
  call compiles hundreds of small ops in each process (36 s against 19 s for a tiny msa_msd
  on 2 busy cores)."""
  from gmscavp_jax.core import steps  # pylint: disable=g-import-not-at-top
  return jax.jit(functools.partial(steps.init_state, config, models, txs))(
      jax.random.key(seed, impl='rbg'))


def tiny_config(name: str = 'msa', **overrides):
  """`configs/NAME.py:runlocal` shrunk to 8 frames of 32x32, tiny models and 4 steps."""
  config = importlib.import_module(f'configs.{name}').get_config('runlocal')
  config.data.num_frames = 8
  config.data.image_size = 32
  config.data.worker_count = 0
  config.model.scale_pools = common.remap_pools(config.model.scale_pools, 8)
  config.model.scale_grids = tuple(config.model.scale_grids)[:len(config.model.scale_pools)]
  config.model.video_widths = (8, 16)
  config.model.audio_widths = (8, 16)
  config.model.embed_dim = 16
  config.train.num_steps = 4
  config.train.batch_size = 8
  config.train.warmup_steps = 1
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 4
  config.eval.num_test_clips = 16
  config.eval.batch_size = 8
  config.eval.num_generate_clips = 8
  config.eval.num_summary_clips = 2
  config.eval.sample_steps = 4
  config.eval.griffin_lim_iters = 4
  config.unet.widths = (16, 32)
  config.unet.attention_levels = (1,)
  config.unet.level_scales = (0, 1)
  config.unet.num_heads = 2
  config.unet.stem_patch = (2, 8)
  config.eval.num_metric_clips = 4
  config.eval.num_memorisation_clips = 16
  config.a2v.image_size = 8
  config.a2v.widths = (16, 32)
  config.a2v.stem_patch = 2
  config.a2v.batch_size = 4
  config.a2v.num_heads = 2
  config.a2v.num_eval_clips = 4
  config.evaluator.video_widths = (8, 16)
  config.evaluator.audio_widths = (8, 16)
  config.evaluator.embed_dim = 8
  config.evaluator.num_steps = 4
  config.evaluator.batch_size = 8
  config.evaluator.num_check_clips = 8
  config.evaluator.max_shift_seconds = 0.5
  config.loss.cdiff_max_shift_seconds = 0.5  # Of the 1 s clip (as the evaluator's shifts).
  v = config.vocoder
  v.width, v.num_blocks, v.projections, v.inference_projections = 16, 1, 0, 2
  v.periods, v.num_scales, v.disc_channels = (2, 3), 1, (4, 8)
  v.segment_frames, v.batch_size, v.num_check_clips = 8, 4, 8
  v.num_steps, v.gan_start_step = 4, 2  # Two reconstruction steps, then two with the GAN.
  v.stft_sizes = ((64, 16),)
  if config.diffusion.training == 'frozen':
    config.diffusion.encoder_steps = 2  # Steps 1-2 contrastive, 3-4 the denoiser alone.
  for key, value in overrides.items():
    group, field = key.split('.')
    config[group][field] = value
  return config



# `tiny_config` overrides for the models at their smallest (two scales, one encoder stage, a
# one-level UNet), for tests whose checks hold at any size: the init and train steps compile
# with a third less CPU (msa_msd: init 8.4 -> 5.8 s, joint step 23.7 -> 16.4 s, interleaved in
# one process).
SMALLEST = {'model.scale_pools': (1, 8), 'model.scale_grids': (1, 1),
            'model.video_widths': (8,), 'model.audio_widths': (8,),
            'unet.widths': (16,), 'unet.attention_levels': (0,), 'unet.level_scales': (0,)}
# The same, with bidirectional diffusion's a2v denoiser at its smallest too.
SMALLEST_A2V = {**SMALLEST, 'a2v.widths': (16,), 'a2v.attention_levels': (0,)}

def run_dir(tmp_path_factory) -> pathlib.Path:
  """A folder of this test run shared by all its processes: with pytest-xdist each worker's
  basetemp is a subfolder of the run's (xdist's documented recipe for session data); without
  it, the run's basetemp. Never shared with another run, so nothing outlives a code change."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  """An exclusive lock between processes, held while the block runs (flock: released by the
  kernel if the process dies)."""
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def trained_workdir(tmp_path_factory, name: str) -> tuple[str, dict]:
  """(workdir, results) of `train.train_and_evaluate(tiny_config(name), workdir)`, trained
  once per test run whichever test file or xdist worker asks first; the others wait for it
  and share it. It is READ-ONLY: a test that writes into a workdir works on `copy_workdir`.
  `results` is the trainer's return value, as JSON (what results.json is written from)."""
  shared = run_dir(tmp_path_factory) / 'trained_workdirs'
  shared.mkdir(exist_ok=True)
  workdir, done = shared / name, shared / f'{name}.results.json'
  with _file_lock(shared / f'{name}.lock'):
    if not done.exists():
      from gmscavp_jax import train  # pylint: disable=g-import-not-at-top
      shutil.rmtree(workdir, ignore_errors=True)  # Left by a build that failed.
      results = train.train_and_evaluate(tiny_config(name), str(workdir))
      partial = shared / f'{name}.results.json.tmp'
      partial.write_text(json.dumps(results))
      os.replace(partial, done)
  return str(workdir), json.loads(done.read_text())


def copy_workdir(workdir: str, dest) -> str:
  """A private copy of a shared trained workdir, for a test that writes into it."""
  shutil.copytree(workdir, dest)
  return str(dest)


@pytest.fixture(scope='session')
def msa_workdir(tmp_path_factory):
  """The tiny msa run (two-stage: encoders for 2 steps, then the denoiser), shared, read-only."""
  return trained_workdir(tmp_path_factory, 'msa')


@pytest.fixture(scope='session')
def msa_msd_workdir(tmp_path_factory):
  """The tiny joint msa_msd run, shared, read-only."""
  return trained_workdir(tmp_path_factory, 'msa_msd')


# The files that take longest (summed test time of one run) go first: `--dist loadfile` hands
# whole files to the two xdist workers in collection order, and in alphabetical order files
# of 2-3 minutes came last, one worker running them while the other had finished.
LONGEST_FIRST = ('test_evaluate', 'test_bidirectional', 'test_soundtracks', 'test_resume',
                 'test_train', 'test_steps', 'test_gpu_suite', 'test_multidevice')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(LONGEST_FIRST)))  # Stable.
