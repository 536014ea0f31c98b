"""What each analysis study of `studies` runs: its rows (a run directory, the training
overrides and evaluate flags of one setting) and how its table and plot are drawn."""

from collections.abc import Callable
import dataclasses
from typing import Sequence

from absl import app

from gmscavp_jax.data import mixture
from gmscavp_jax.diffusion import samplers as samplers_lib
from gmscavp_jax.evaluators import suite


@dataclasses.dataclass
class Options:
  """What the studies' flags set (defaults = the flags' defaults)."""
  baseline: str | None = None  # A trained run reused as the row the config itself gives.
  workdir: str | None = None  # sampling_steps: the trained run.
  samplers: tuple = samplers_lib.DIFFUSION_SAMPLERS  # euler,heun for a flow run.
  sample_steps: tuple = (10, 25, 50, 100, 250)
  num_clips: int | None = None  # Test videos to generate for (sampling_steps: 64 if None).
  guidance: float | None = None
  intervals: tuple = (0, 1, 2, 4, 8)
  grids: tuple = ('2,2,2,1,1', '4,4,4,1,1')
  sizes: tuple = (1000, 4000, 16000)
  source: str = 'synthetic'
  mixtures: tuple = ('synthetic[clips=4000]:0.5,synthetic[seed=1,clips=16000]:0.5',)


@dataclasses.dataclass
class Row:
  """One setting of a study: its run directory name, label, plot position and series, the
  training overrides (--config.F=V), evaluate flags, and a trained run to reuse, if any.
  `x_field` (a config.json path) gives the plot position once the run exists."""
  name: str
  label: str
  x: float
  series: str
  overrides: list = dataclasses.field(default_factory=list)
  eval_flags: list = dataclasses.field(default_factory=list)
  reuse: str | None = None
  x_field: str | None = None


# Table columns of the studies that train (ablation's), and of sampling_steps (no retrieval:
# one checkpoint), which adds the latency.
TRAINED_METRICS = tuple(m for m in suite.METRICS if m[0] in suite.PLOT_METRICS)
SAMPLING_METRICS = tuple(m for m in TRAINED_METRICS if m[0].startswith('gen/')) + (
    ('gen/seconds_per_clip', 's / clip ↓', True, 3),)


def ints(values: Sequence[str], flag: str) -> list[int]:
  """`values` (of --`flag`) as integers; UsageError if one is not."""
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--{flag}={",".join(values)}: expected integers') from e


def sampling_steps_rows(o: Options) -> tuple[list[Row], dict]:
  """One trained run (--workdir) evaluated at every (sampler, steps); no training."""
  if not o.workdir:
    raise app.UsageError('sampling_steps needs --workdir, a trained run')
  fixed = [f'--num_clips={o.num_clips or 64}'] + (
      [f'--guidance={o.guidance}'] if o.guidance is not None else [])
  rows = [Row(f'{s}-{n}', f'{s}, {n} steps', n, s,
              eval_flags=[f'--sampler={s}', f'--steps={n}', *fixed], reuse=o.workdir)
          for s in o.samplers for n in o.sample_steps]
  return rows, dict(xlabel='sampling steps', log_x=True, xticks=None, metrics=SAMPLING_METRICS,
                    title=f'sampling_steps: {o.workdir}',
                    about='One trained run sampled by each sampler at each step count; '
                    's / clip is the sampling time per clip at eval.batch_size clips a '
                    'batch, after compiling.')


def bidirectional_rows(o: Options) -> tuple[list[Row], dict]:
  """A row per train.bidirectional_interval (0 = off, the config as it is)."""
  rows = [Row(f'interval{k}', 'off' if k == 0 else f'every {k}', i, 'bidirectional',
              overrides=[] if k == 0 else [f'--config.train.bidirectional_interval={k}'],
              reuse=o.baseline if k == 0 else None) for i, k in enumerate(o.intervals)]
  return rows, dict(xlabel='train.bidirectional_interval', log_x=False,
                    xticks=[(r.x, r.label) for r in rows], metrics=TRAINED_METRICS,
                    about='Audio-to-video diffusion trained beside video-to-audio every K '
                    'steps (CMMD bidirectional training); off is the config as it is.')


def spatial_rows(o: Options) -> tuple[list[Row], dict]:
  """The config's temporal-only pyramid, then a row per model.scale_grids of --grids."""
  rows = [Row('temporal', 'temporal only (config)', 0, 'spatial', reuse=o.baseline)]
  for i, grids in enumerate(o.grids, 1):
    grid = tuple(ints(grids.split(','), 'grids'))
    rows.append(Row('grids' + '-'.join(map(str, grid)), f'grids {grid}', i, 'spatial',
                    overrides=[f'--config.model.scale_grids={grid}']))
  return rows, dict(xlabel='model.scale_grids', log_x=False,
                    xticks=[(r.x, r.label.replace('grids ', '')) for r in rows],
                    metrics=TRAINED_METRICS,
                    about='Spatial grids g_l x g_l at the fine scales (the UNet cross-attends '
                    'to T_l * g_l^2 tokens) against the temporal-only pyramid.')


def data_scaling_rows(o: Options) -> tuple[list[Row], dict]:
  """The first N train clips of --source per size, the full set, then a row per mixture."""
  try:
    (source,) = mixture.parse(o.source)
  except ValueError as e:
    raise app.UsageError(f'--source={o.source}: one dataset, NAME[OPTIONS] ({e})') from e
  sized = lambda n: dataclasses.replace(source, clips=n, weight=1.0).spec()
  rows = [Row(f'clips{n}', f'{n} clips', n, source.name,
              overrides=[f'--config.data.mixture={sized(n)}']) for n in o.sizes]
  plain = source == mixture.Entry('synthetic')
  rows.append(Row('full', 'full train set (config)', 0, source.name,
                  overrides=[] if plain else [f'--config.data.mixture={source.spec()}'],
                  reuse=o.baseline, x_field='data.num_train_clips' if plain else None))
  for i, spec in enumerate(o.mixtures):
    try:
      entries = mixture.parse(spec)
    except ValueError as e:
      raise app.UsageError(f'--mixtures={spec}: {e}') from e
    total = sum(e.clips for e in entries) if all(e.clips for e in entries) else 0
    rows.append(Row(f'mixture{i}', f'mixture {spec}', total, f'mixture {spec}',
                    overrides=[f'--config.data.mixture={spec}']))
  return rows, dict(xlabel='training clips', log_x=True, xticks=None,
                    metrics=TRAINED_METRICS,
                    about='The first N train clips of the source (data.mixture with clips=N: '
                    'the evaluator networks stay those of the full set), the full set, and '
                    'mixtures of sources by weight (grain MapDataset.mix).')


# Each study's rows, by the name its subcommand has.
ROWS: dict[str, Callable[[Options], tuple[list[Row], dict]]] = {
    'sampling_steps': sampling_steps_rows, 'bidirectional': bidirectional_rows,
    'spatial': spatial_rows, 'data_scaling': data_scaling_rows}
STUDIES = tuple(ROWS)


def study_rows(study: str, o: Options) -> tuple[list[Row], dict]:
  """The rows of `study`, and how to draw them: {'xlabel', 'log_x', 'xticks', 'metrics',
  'about'} and, for sampling_steps, 'title'."""
  if study not in ROWS:
    raise app.UsageError(f'unknown study {study!r}; expected one of {", ".join(STUDIES)}')
  return ROWS[study](o)
