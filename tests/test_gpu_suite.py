"""The GPU benchmark suite (tools/gpu_suite.py) end to end on a CPU in --dry_run mode, its
budget and out-of-memory paths, and the attention implementation choice (models/attention.py).

The end-to-end test compiles a tiny train step and two sampler programs: minutes on a busy
2-core CPU the first time, seconds with the persistent compilation cache that conftest sets.
"""

import importlib
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.infra import sharding
from gmscavp_jax.models import attention
from gmscavp_jax.tools import gpu_environment
from gmscavp_jax.tools import gpu_suite
from gmscavp_jax.tools import step_timing
from tests.conftest import ROOT

TRAIN_FIELDS = {'phase', 'global_batch', 'configured_batch', 'oom_tried', 'compile_s',
                'step_ms', 'steps_per_sec', 'examples_per_sec', 'flops_per_step',
                'flops_per_sec', 'peak_flops_per_sec', 'mfu', 'mfu_note', 'memory_bytes',
                'memory_source', 'memory_estimate_bytes', 'timed_steps'}
LATENCY_FIELDS = {'sampler', 'num_steps', 'guidance', 'guidance_interval', 'denoiser_calls',
                  'batch_size', 'clip_s', 'compile_s', 'latency_s', 'clips_per_sec', 'repeats',
                  'wall_s', 'real_time_factor'}
THROUGHPUT_FIELDS = {'sampler', 'num_steps', 'batch_size', 'clips_per_sec', 'latency_s',
                     'compile_s', 'tried'}
TOP_FIELDS = {'suite', 'version', 'dry_run', 'created', 'device', 'jax_version',
              'jaxlib_version', 'python_version', 'commit', 'dirty', 'attention', 'settings',
              'config', 'experiment', 'compute_dtype', 'clip_s', 'sample_steps', 'guidance',
              'guidance_interval', 'train', 'latency', 'throughput', 'skipped', 'complete',
              'elapsed_s'}

# Fields of entries that the dry run leaves empty: skipped items, OOM tries, cuDNN checks.
NESTED_FIELDS = {'item', 'reason', 'global_batch', 'error', 'max_abs_diff'}
# The dry run's budget: nothing in it may be skipped, whatever the load.
DRY_RUN_SECONDS = gpu_suite.DRY_RUN_SETTINGS.budget_s


def _full_config():
  return importlib.import_module('configs.msa_msd').get_config()


def _documented_fields() -> set:
  """The `names` in backticks of docs/speed.md's "GPU benchmark suite" section."""
  with open(os.path.join(ROOT, 'docs', 'speed.md')) as f:
    text = f.read()
  section = text[text.index('## GPU benchmark suite'):]
  following = section.find('\n## ', 3)
  section = section if following < 0 else section[:following]
  return set(re.findall(r'`([a-z_0-9]+)`', section))


def test_dry_run_suite_writes_a_sane_documented_report(tmp_path):
  out = tmp_path / 'report.json'
  gpu_suite.main(_full_config(), str(out), dry_run=True)
  report = json.loads(out.read_text())
  assert set(report) == TOP_FIELDS
  assert report['suite'] == 'gpu' and report['dry_run'] and report['version'] == 1
  assert report['complete'] and 0 < report['elapsed_s'] < DRY_RUN_SECONDS
  assert report['compute_dtype'] == 'bfloat16'
  assert report['config']['train']['compute_dtype'] == 'bfloat16'
  assert report['device']['platform'] == jax.devices()[0].platform
  assert report['jax_version'] == jax.__version__
  assert report['skipped'] == []  # The dry run fits its budget with room to spare.
  assert report['attention']['by_head_dim'] == {'16': 'xla'}  # CPU: XLA's attention.
  assert report['attention']['cudnn_check'] == {} and report['attention']['fallback'] is None

  (train,) = report['train']
  assert set(train) == TRAIN_FIELDS
  assert train['global_batch'] == train['configured_batch'] == 2 and train['oom_tried'] == []
  assert train['compile_s'] > 0 and train['step_ms'] > 0 and train['flops_per_step'] > 0
  assert train['memory_bytes'] > 0
  if report['device']['platform'] == 'cpu':  # No spec-sheet peak: no MFU, and why.
    assert train['mfu'] is None and 'PEAK_FLOPS' in train['mfu_note']
  else:
    assert 0 < train['mfu'] <= 1

  # The dry run times the default sampler alone (Settings.other_samplers).
  assert [r['sampler'] for r in report['latency']] == ['dpmpp2m']
  for r in report['latency']:
    assert set(r) == LATENCY_FIELDS
    assert r['batch_size'] == 1 and r['num_steps'] == report['sample_steps'] == 2
    assert r['latency_s'] > 0 and r['compile_s'] > 0 and r['clip_s'] == report['clip_s']
    assert r['real_time_factor'] == pytest.approx(r['clip_s'] / r['latency_s'])
  assert [r['sampler'] for r in report['throughput']] == ['dpmpp2m']
  best = report['throughput'][0]['batch_size']  # The default sampler's, at batch 1 or 2.
  for i, r in enumerate(report['throughput']):
    assert set(r) == THROUGHPUT_FIELDS
    # The default sampler tries every batch; the others batch 1 and its best.
    assert [t['batch_size'] for t in r['tried']] == ([1, 2] if i == 0 else sorted({1, best}))
    assert r['clips_per_sec'] == max(t['clips_per_sec'] for t in r['tried']) > 0

  documented = _documented_fields()
  assert not (TOP_FIELDS | TRAIN_FIELDS | LATENCY_FIELDS | THROUGHPUT_FIELDS
              | set(report['device']) | set(report['attention'])
              | set(report['settings']) | NESTED_FIELDS) - documented


def _fake_step(batch_size):
  return {'compile_s': 1.0, 'step_s': 0.5, 'steps_per_sec': 2.0,
          'examples_per_sec': batch_size / 0.5, 'flops': 1e12,
          'memory': {'bytes': 10, 'source': 'device', 'estimate_bytes': 9}}


def test_train_halves_the_batch_until_it_fits(monkeypatch):
  def fake(config, mesh, num_steps, phase, peak):
    if config.train.batch_size > 16:
      raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating')
    return _fake_step(config.train.batch_size)

  monkeypatch.setattr(step_timing, 'time_train_step', fake)
  config = gpu_suite.suite_config(_full_config())
  mesh = sharding.mesh_from_config(config)
  report = {'train': [], 'skipped': []}
  gpu_suite._train(config, mesh, 'joint', 4e12, gpu_suite.Settings(),
                   gpu_suite.Budget(100.0), report)
  (train,) = report['train']
  assert train['global_batch'] == 16 and train['configured_batch'] == 64
  assert [t['global_batch'] for t in train['oom_tried']] == [64, 32]
  assert train['mfu'] == pytest.approx(1e12 / 0.5 / 4e12)


def test_train_skips_with_a_reason_when_the_budget_is_spent(monkeypatch):
  clock = iter(np.arange(0.0, 1000.0, 60.0))  # Every look at the clock: one more minute.

  def out_of_memory(*args):
    raise MemoryError(f'the device ran out at global batch {args[0].train.batch_size}')

  monkeypatch.setattr(step_timing, 'time_train_step', out_of_memory)
  config = gpu_suite.suite_config(_full_config())
  report = {'train': [], 'skipped': []}
  gpu_suite._train(config, sharding.mesh_from_config(config), 'joint', None,
                   gpu_suite.Settings(), gpu_suite.Budget(100.0, clock=lambda: next(clock)),
                   report)
  assert report['train'] == []
  (skipped,) = report['skipped']
  assert skipped['item'] == 'train/joint' and 'time budget' in skipped['reason']


def test_budget_reason_names_the_time_used():
  now = [0.0]
  budget = gpu_suite.Budget(100.0, clock=lambda: now[0])
  now[0] = 70.0
  assert budget.reason_against(30.0) is None
  assert budget.reason_against(31.0) == ('time budget: 70 s of 100 s used, the item needs '
                                         'about 31 s')


def _qkv(dtype, head_dim=16):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 12, 2, head_dim), jnp.float32)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_attention_on_cpu_is_xlas_bit_for_bit(dtype):
  q, k, v = _qkv(dtype)
  assert attention.implementation(q, k, v) == 'xla'
  np.testing.assert_array_equal(np.asarray(jax.jit(attention.attend)(q, k, v), np.float32),
                                np.asarray(jax.jit(jax.nn.dot_product_attention)(q, k, v),
                                           np.float32))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_chunked_attention_is_xlas_row_for_row(monkeypatch, dtype):
  # Small chunks over an odd number of queries: 13 queries x 12 keys in chunks of 5 (the
  # last padded); values and gradients as XLA's one-shot attention.
  monkeypatch.setattr(attention, 'CHUNK_LOGITS', 5 * 12)
  q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 13, 2, 16), jnp.float32)
  k, v = k[:, :12], v[:, :12]
  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  assert attention.implementation(q, k, v, backend='cpu') == 'chunked'
  assert attention.implementation(q[:, :5], k, v, backend='cpu') == 'xla'  # One chunk.
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a).astype(jnp.float32)))
  out, grads = jax.jit(jax.value_and_grad(loss(attention.chunked), argnums=(0, 1, 2)))(q, k, v)
  ref, ref_grads = jax.jit(jax.value_and_grad(loss(jax.nn.dot_product_attention),
                                              argnums=(0, 1, 2)))(q, k, v)
  tol = 1e-6 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(float(out), float(ref), rtol=tol)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               rtol=tol, atol=tol)
  if dtype == jnp.float32:  # Each row computed as XLA's: equal bit for bit on this CPU.
    np.testing.assert_array_equal(np.asarray(jax.jit(attention.attend)(q, k, v)),
                                  np.asarray(jax.jit(jax.nn.dot_product_attention)(q, k, v)))


def test_attention_picks_cudnn_only_for_16_bit_on_a_capable_gpu(monkeypatch):
  monkeypatch.setattr(attention, '_cudnn_capable_device', lambda backend: backend == 'gpu')
  assert attention.implementation(*_qkv(jnp.bfloat16), backend='gpu') == 'cudnn'
  assert attention.implementation(*_qkv(jnp.float16), backend='gpu') == 'cudnn'
  assert attention.implementation(*_qkv(jnp.float32), backend='gpu') == 'xla'
  assert attention.implementation(*_qkv(jnp.bfloat16, head_dim=12), backend='gpu') == 'xla'
  assert attention.implementation(*_qkv(jnp.bfloat16, head_dim=256), backend='gpu') == 'xla'
  assert attention.implementation(*_qkv(jnp.bfloat16), backend='cpu') == 'xla'
  big = jax.ShapeDtypeStruct((1, 3200, 4, 64), jnp.float32)  # The full-size level 1.
  assert attention.implementation(big, big, big, backend='cpu') == 'chunked'
  assert attention.implementation(big, big, big, backend='gpu') == 'xla'
  q, k, v = _qkv(jnp.bfloat16)
  assert attention.implementation(q, k[:, :1], v[:, :1], backend='gpu') == 'xla'  # One key.
  monkeypatch.setattr(attention, 'IMPLEMENTATION', 'xla')
  assert attention.implementation(*_qkv(jnp.bfloat16), backend='gpu') == 'xla'
  monkeypatch.setattr(attention, 'IMPLEMENTATION', 'flash')
  with pytest.raises(ValueError, match='GMSCAVP_ATTENTION'):
    attention.implementation(*_qkv(jnp.bfloat16))


def test_suite_falls_back_to_xla_where_cudnn_fails(monkeypatch):
  # A CPU taken for a cuDNN-capable GPU: cuDNN's attention cannot run, the suite goes on
  # with XLA's and says so.
  monkeypatch.setattr(attention, '_cudnn_capable_device', lambda backend: True)
  monkeypatch.setattr(attention, 'IMPLEMENTATION', 'auto')
  report = gpu_environment.attention_report(
      gpu_suite.suite_config(_full_config(), dry_run=True))
  assert report['setting'] == 'auto' and report['fallback'] == 'xla'
  assert report['by_head_dim'] == {'16': 'xla'} and 'error' in report['cudnn_check']['16']
  assert attention.IMPLEMENTATION == 'xla'


def test_sampling_times_every_sampler_and_the_others_at_the_best_batch(monkeypatch):
  """The full suite's sampler plan (the dry run times the default sampler alone), with
  time_sampling_latency replaced by a model of it: clips/s grow with the batch."""
  calls = []

  def fake_latency(config, mesh, sampler, num_steps, repeats, batch_size, built):
    del config, mesh, repeats, built
    calls.append((sampler, batch_size))
    latency = 0.1 * batch_size ** 0.5
    return {'sampler': sampler, 'num_steps': num_steps, 'batch_size': batch_size,
            'clip_s': 2.0, 'compile_s': 1.0, 'latency_s': latency,
            'clips_per_sec': batch_size / latency}

  monkeypatch.setattr(step_timing, 'time_sampling_latency', fake_latency)
  monkeypatch.setattr(step_timing, 'sampling_params', lambda config, mesh: None)
  config = _full_config()
  report = {'latency': [], 'throughput': [], 'skipped': []}
  settings = gpu_suite.Settings(repeats=1, throughput_batches=(4, 16))
  gpu_suite._sampling(config, None, settings, gpu_suite.Budget(1e6), report, lambda: None)  # pylint: disable=protected-access
  assert calls == [('dpmpp2m', 1), ('ddpm', 1), ('ddim', 1), ('dpmpp2m', 4), ('dpmpp2m', 16),
                   ('ddpm', 16), ('ddim', 16)]
  assert [r['sampler'] for r in report['latency']] == ['dpmpp2m', 'ddpm', 'ddim']
  assert [(r['sampler'], r['batch_size']) for r in report['throughput']] == [
      ('dpmpp2m', 16), ('ddpm', 16), ('ddim', 16)]
  assert report['skipped'] == []
