"""The MSD UNet side by side with a PyTorch replica: verified equal, then timed (issue 22).

  pip install -r requirements-torch.txt   # torch 2.13, CPU build; not a test dependency
  python -m gmscavp_jax.tools.torch_sidebyside --config=configs/msa_msd.py:runlocal --out=DIR

1. Verification (in this process): the Flax UNet (models/unet.py) and tools/torch_unet.py,
   built from the same config, get the same params (random for every leaf, so the output
   projections that an init zeroes carry signal; sidebyside_lib.randomised_params, copied
   into torch by `torch_unet.load_flax_params`). Parameter counts must be equal, the forward outputs on a
   fixed batch equal within --fwd_tol (max |diff| / max |JAX|) and the gradients of the loss
   below within --grad_tol (the same ratio per leaf, worst leaf reported); else it raises.
2. Timing in child processes, alternating JAX, torch, JAX, torch ... for --rounds rounds,
   each with the same threads (torch.set_num_threads(--threads); JAX: the default CPU client,
   whose pool has one thread per core): forward at batch 1, 2 and 32, one training step at
   batch 32, and the peak (the best of --peak_repeats warm 2048^3 float32 matmuls). Each
   child reports the median call time of each; the report is the median over rounds and the
   ratio torch / JAX (above 1: JAX is faster). --rounds=0 runs the verification alone.

The training step is the UNet's alone, the same in both frameworks (not the project's
steps.train_step: msa_msd trains 'joint', whose step also runs both encoders, log-mel and
the MSA loss). Eq. 7's v-prediction regression on a fixed batch: x_t = a x0 + s eps,
loss = mean((UNet(x_t, t, video, drop) - (a eps - s x0))^2) with a^2 + s^2 = 1 drawn per
example; gradient, optax.clip_by_global_norm(1) / torch clip_grad_norm_(1), Adam(1e-3).
Writes DIR/sidebyside.json and DIR/sidebyside.md and prints the table.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmscavp_jax.core import steps
from gmscavp_jax.infra import perf
from gmscavp_jax.tools import sidebyside_lib as lib
from gmscavp_jax.tools import torch_layout

LEARNING_RATE, CLIP_NORM = 1e-3, 1.0


@dataclasses.dataclass(frozen=True)
class Options:
  """What the flags set: seed of params and batches, torch threads, timed seconds per
  measurement, warm matmuls of the peak, and the verification's tolerances."""
  seed: int = 0
  threads: int = os.cpu_count() or 1
  min_seconds: float = 2.0
  peak_repeats: int = 8
  fwd_tol: float = 1e-5
  grad_tol: float = 1e-4


def jax_functions(config):
  """(forward, loss, tx) of the Flax UNet: jittable forward(params, batch) -> (B,Ta,F) on
  batch['x0'], the training loss(params, batch) -> scalar, and the step's optimizer.

  As the project runs them: the forward in one call at any batch (the samplers'), the loss
  in chunks of unet.batch_chunk examples (msd.msd_loss's, `unet.apply_in_chunks`)."""
  from gmscavp_jax.models import unet as unet_lib
  unet = unet_lib.build_unet(config)
  train_chunk = unet_lib.batch_chunk(config.unet.batch_chunk)

  def forward(params, b, x=None, chunk=0):
    return unet_lib.apply_in_chunks(functools.partial(unet.apply, {'params': params}), chunk,
                                    b['x0'] if x is None else x, b['t'], lib.scales_of(b),
                                    drop_condition=b['drop'])

  def loss(params, b):
    a, s = b['a'][:, None, None], b['s'][:, None, None]
    pred = forward(params, b, a * b['x0'] + s * b['eps'], train_chunk)
    return jnp.mean(jnp.square(pred - (a * b['eps'] - s * b['x0'])))

  tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adam(LEARNING_RATE))
  return forward, loss, tx


def jax_train_step(loss, tx):
  """The jitted training step of `jax_functions`' `loss` and `tx`: (params, opt_state,
  batch) -> (params, opt_state, loss value), params and optimizer state donated."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, opt_state, batch):
    value, grads = jax.value_and_grad(loss)(p, batch)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, value

  return train_step


def torch_functions(config, params: dict, threads: int):
  """(model, forward, loss, to_torch): the torch UNet with the Flax `params` copied in, on
  `threads` threads; forward(batch) -> (B,Ta,F), loss(batch) -> scalar (as `jax_functions`),
  to_torch(numpy batch) -> the same dict of tensors."""
  import torch
  from gmscavp_jax.tools import torch_unet
  torch.set_num_threads(threads)
  model = torch_unet.build_torch_unet(config, lib.video_shapes(config))
  torch_unet.load_flax_params(model, params, tuple(config.unet.stem_patch))

  def forward(b, x=None):
    return model(b['x0'] if x is None else x, b['t'], lib.scales_of(b), b['drop'])

  def loss(b):
    a, s = b['a'][:, None, None], b['s'][:, None, None]
    pred = forward(b, a * b['x0'] + s * b['eps'])
    return torch.mean(torch.square(pred - (a * b['eps'] - s * b['x0'])))

  to_torch = lambda b: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
  return model, forward, loss, to_torch


def verify(config, opts: Options, batch_size: int = 4) -> tuple[dict, dict]:
  """Checks the torch UNet against the Flax one (module docstring, step 1) on a batch of
  `batch_size` (one example's condition dropped); returns (the numbers, the params used).
  Raises AssertionError naming what differs."""
  from gmscavp_jax.tools import torch_unet
  mel_frames = steps.num_mel_frames(config)
  params = lib.randomised_params(config, opts.seed, mel_frames)
  batch = lib.make_batch(config, batch_size, opts.seed, mel_frames)
  forward, loss, _ = jax_functions(config)
  out_j = np.asarray(jax.jit(forward)(params, batch))
  loss_j, grads_j = jax.jit(jax.value_and_grad(loss))(params, batch)
  model, t_forward, t_loss, to_torch = torch_functions(config, params, opts.threads)
  tb = to_torch(batch)
  out_t = t_forward(tb).detach().numpy()
  loss_t = t_loss(tb)
  loss_t.backward()
  errors = lib.leaf_errors(torch_unet.flax_grads(model, params),
                           jax.tree.map(np.asarray, grads_j))
  leaf = max(errors, key=errors.get)
  result = {'params_flax': torch_layout.count(params),
            'params_torch': torch_unet.num_params(model), 'batch': batch_size,
            'forward_rel_err': lib.relative_error(out_t, out_j),
            'loss_jax': float(loss_j), 'loss_torch': loss_t.item(),
            'grad_rel_err_worst_leaf': errors[leaf], 'worst_leaf': leaf}
  if result['params_flax'] != result['params_torch']:
    raise AssertionError(f'parameter counts differ: {result}')
  if not result['forward_rel_err'] <= opts.fwd_tol:
    raise AssertionError(f'forward outputs differ beyond {opts.fwd_tol}: {result}')
  if not errors[leaf] <= opts.grad_tol:
    raise AssertionError(f'gradients differ beyond {opts.grad_tol}: {result}')
  return result, params


def time_jax(config, params: dict, opts: Options) -> dict:
  """Child: {row: median seconds} of the jitted Flax UNet forward and train step (params
  and optimizer state donated), 'peak_gflops' and 'version'."""
  mel_frames = steps.num_mel_frames(config)
  forward, loss, tx = jax_functions(config)
  params = jax.device_put(params)
  fwd, out = jax.jit(forward), {}
  for b in lib.FORWARD_BATCHES:
    batch = jax.device_put(lib.make_batch(config, b, opts.seed, mel_frames))
    out[f'forward_b{b}'] = lib.timed(lambda: fwd(params, batch).block_until_ready(),
                                     opts.min_seconds)

  train_step = jax_train_step(loss, tx)
  batch = jax.device_put(lib.make_batch(config, lib.TRAIN_BATCH, opts.seed, mel_frames))
  p = jax.tree.map(jnp.copy, params)
  state = [p, tx.init(p)]

  def step():
    p, o, value = train_step(state[0], state[1], batch)
    state[:] = [p, o]
    jax.block_until_ready((p, o, value))

  out[f'train_b{lib.TRAIN_BATCH}'] = lib.timed(step, opts.min_seconds)
  out['peak_gflops'] = perf.measure_matmul_flops(lib.MATMUL, repeats=opts.peak_repeats) / 1e9
  out['version'] = jax.__version__
  return out


def time_torch(config, params: dict, opts: Options) -> dict:
  """Child: the same as `time_jax` for the torch UNet (forward under inference_mode; the
  step zero_grad, forward, backward, clip_grad_norm_, Adam) on `opts.threads` threads."""
  import torch
  mel_frames = steps.num_mel_frames(config)
  model, forward, loss, to_torch = torch_functions(config, params, opts.threads)
  out = {}
  with torch.inference_mode():
    for b in lib.FORWARD_BATCHES:
      batch = to_torch(lib.make_batch(config, b, opts.seed, mel_frames))
      out[f'forward_b{b}'] = lib.timed(lambda: forward(batch), opts.min_seconds)
  batch = to_torch(lib.make_batch(config, lib.TRAIN_BATCH, opts.seed, mel_frames))
  opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

  def step():
    opt.zero_grad(set_to_none=True)
    loss(batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    opt.step()

  out[f'train_b{lib.TRAIN_BATCH}'] = lib.timed(step, opts.min_seconds)
  a, b = torch.randn(2, lib.MATMUL, lib.MATMUL,
                     generator=torch.Generator().manual_seed(opts.seed))
  out['peak_gflops'] = lib.best_gflops(lambda: torch.matmul(a, b), opts.peak_repeats)
  out['version'] = torch.__version__
  return out


def config_args(argv: list[str]) -> list[str]:
  """The --config... arguments of `argv`, passed on to each child."""
  out = []
  for i, a in enumerate(argv):
    if a.startswith('--config'):
      out.append(a)
      if a == '--config' and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def run_children(args: list[str], params_path: str, folder: str, rounds: int,
                 opts: Options) -> list[dict]:
  """`rounds` rounds of a JAX child, then a torch child; [{'round', 'jax', 'torch'}]."""
  results = []
  for r in range(rounds):
    result = {'round': r}
    for fw in ('jax', 'torch'):
      path = os.path.join(folder, f'{fw}_{r}.json')
      cmd = [sys.executable, '-m', 'gmscavp_jax.tools.torch_sidebyside', f'--child={fw}',
             f'--params={params_path}', f'--result={path}', f'--seed={opts.seed}',
             f'--threads={opts.threads}', f'--min_seconds={opts.min_seconds}',
             f'--peak_repeats={opts.peak_repeats}'] + args
      t0 = time.time()
      subprocess.run(cmd, check=True)
      with open(path) as f:
        result[fw] = json.load(f)
      row = ', '.join(f'{k} {1e3 * result[fw][k]:.1f} ms' for k in lib.ROWS)
      load = '-'.join(f'{x:.1f}' for x in result[fw]['load_1m'])
      print(f'round {r + 1}/{rounds} {fw}: {row}, peak {result[fw]["peak_gflops"]:.1f} '
            f'GFLOP/s ({time.time() - t0:.0f} s, load {load})', flush=True)
    results.append(result)
  return results


def sidebyside(config, out_dir: str, argv: list[str], rounds: int, opts: Options) -> dict:
  """Verifies, times `rounds` alternating rounds, writes out_dir/sidebyside.{json,md};
  returns the report."""
  os.makedirs(out_dir, exist_ok=True)
  load_before = os.getloadavg()[0]
  print('verifying the torch UNet against the Flax one ...', flush=True)
  check, params = verify(config, opts)
  print(f'verified: {check}', flush=True)
  if not rounds:  # --rounds=0: the verification alone.
    with open(os.path.join(out_dir, 'verification.json'), 'w') as f:
      json.dump(check, f, indent=1)
    return {'verification': check}
  with tempfile.TemporaryDirectory() as folder:
    params_path = os.path.join(folder, 'params.npz')
    lib.save_params(params, params_path)
    results = run_children(config_args(argv), params_path, folder, rounds, opts)
  summary = lib.summarise(results)
  meta = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
          'jax': results[0]['jax']['version'], 'torch': results[0]['torch']['version'],
          'cpus': os.cpu_count(), 'torch threads': opts.threads, 'rounds': rounds,
          'train step': 'UNet alone (v-loss, clip 1, Adam)',
          'load average (1 min) before -> after': f'{load_before:.2f} -> '
                                                   f'{os.getloadavg()[0]:.2f}'}
  report = {'verification': check, 'summary': summary, 'meta': meta, 'rounds': results}
  with open(os.path.join(out_dir, 'sidebyside.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, 'sidebyside.md'), 'w') as f:
    f.write(lib.markdown(summary, meta))
  return report


def main(argv):
  f = _FLAGS
  opts = Options(seed=f['seed'].value, threads=f['threads'].value,
                 min_seconds=f['min_seconds'].value, peak_repeats=f['peak_repeats'].value,
                 fwd_tol=f['fwd_tol'].value, grad_tol=f['grad_tol'].value)
  config = f['config'].value
  if f['child'].value:
    timer = time_jax if f['child'].value == 'jax' else time_torch
    load = os.getloadavg()[0]
    result = timer(config, lib.load_params(f['params'].value), opts)
    result['load_1m'] = [load, os.getloadavg()[0]]  # At the child's start and end.
    with open(f['result'].value, 'w') as out:
      json.dump(result, out)
    return
  if not f['out'].value:
    raise app.UsageError('--out is required')
  report = sidebyside(config, f['out'].value, sys.argv, f['rounds'].value, opts)
  if 'summary' in report:
    print(lib.markdown(report['summary'], report['meta']))


def _define_flags() -> dict:
  """The command's flags (defined only when it runs as a command, never at import)."""
  from absl import flags
  from ml_collections import config_flags
  d = Options()
  return {
      'config': config_flags.DEFINE_config_file(
          'config', None, 'Experiment config file (configs/msa_msd.py:runlocal).'),
      'out': flags.DEFINE_string('out', None, 'Folder for sidebyside.json and .md.'),
      'rounds': flags.DEFINE_integer('rounds', 3, 'Alternating JAX/torch child pairs; 0: '
                                     'verify only (DIR/verification.json).'),
      'seed': flags.DEFINE_integer('seed', d.seed, 'Seed of params and batches.'),
      'threads': flags.DEFINE_integer('threads', d.threads, 'torch.set_num_threads.'),
      'min_seconds': flags.DEFINE_float('min_seconds', d.min_seconds,
                                        'Timed seconds per measurement and child.'),
      'peak_repeats': flags.DEFINE_integer('peak_repeats', d.peak_repeats,
                                           'Warm matmuls of the peak; the best counts.'),
      'fwd_tol': flags.DEFINE_float('fwd_tol', d.fwd_tol, 'Max relative forward error.'),
      'grad_tol': flags.DEFINE_float('grad_tol', d.grad_tol, 'Max relative gradient error.'),
      'child': flags.DEFINE_enum('child', None, ['jax', 'torch'],
                                 'Internal: time one framework in this process.'),
      'params': flags.DEFINE_string('params', None, 'Internal: the params .npz to time.'),
      'result': flags.DEFINE_string('result', None, 'Internal: where a child writes.'),
  }


if __name__ == '__main__':
  from gmscavp_jax import cli
  _FLAGS = _define_flags()
  cli.run(main)
