"""Where a compiled step's time goes: a jax.profiler trace read back against its HLO.

`profile` runs a compiled jax program a few times under `jax.profiler.trace` (the
trace stays on disk for TensorBoard's profile plugin or XProf), then reads the trace with
`jax.profiler.ProfileData` and sums the time of every HLO op the runtime executed. The ops
are classified from the compiled HLO text:

  matmul/conv   dot and convolution ops and the fusions that hold them; their FLOPs are
                counted from the shapes (2 x output elements x contracted elements)
                (convolution weight gradients are shown apart: see is_weight_grad)
  elementwise   other fusions and ops: normalisation, activations, reductions, optimizer
  layout        copies and transposes, and fusions of nothing but data movement
  fft           the STFT of the audio front end
  collective    all-reduce, all-gather, reduce-scatter, ...

`Breakdown` splits the MFU into two factors that multiply back to it exactly (when the
matmul FLOPs are all the step's FLOPs):

  MFU = matmul time x matmul efficiency
  matmul time       the matmul/conv ops' time over the step time
  matmul efficiency their FLOPs over (their time x the peak FLOP/s)

so a low MFU reads as "the step spends its time elsewhere" (elementwise and layout ops, idle
threads) or "its matmuls are too small to run at the peak". Times are summed over the
threads that ran ops: ops on concurrent threads overlap, so the categories can add up to
more than the step. An op XLA splits over threads shows as one event, so an op's efficiency
is against the whole peak, as the MFU's is.
Control-flow ops (while, conditional, call) are left out: their events contain their body's.
"""

import collections
import dataclasses
import math
import os
import re
import tempfile
import time
from typing import Any, Callable

import jax

# Ops that only move or reinterpret data.
_LAYOUT_OPS = frozenset({
    'parameter', 'constant', 'copy', 'transpose', 'bitcast', 'reshape', 'broadcast', 'slice',
    'concatenate', 'dynamic-slice', 'dynamic-update-slice', 'pad', 'tuple',
    'get-tuple-element', 'reverse', 'iota', 'copy-start', 'copy-done'})
_COLLECTIVE_OPS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                   'collective-permute')
_CONTROL_OPS = frozenset({'while', 'conditional', 'call'})
CATEGORIES = ('matmul/conv', 'elementwise', 'layout', 'fft', 'collective', 'other')

# `%name = shape opcode(`; a tuple shape '(f32[2], s32[])' is matched up to its ')'.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) .*\{$')


@dataclasses.dataclass
class Instruction:
  """One HLO instruction: its output dims (None for tuples), opcode and text line."""
  name: str
  dims: tuple[int, ...] | None
  opcode: str
  line: str


def _dims(shape: str) -> tuple[int, ...] | None:
  m = re.match(r'^[a-z]\w*\[([\d,]*)\]', shape)
  if m is None:
    return None
  return tuple(int(d) for d in m.group(1).split(',') if d)


def _operands(line: str, opcode: str) -> list[str]:
  """Names of the operands of `line`: the %names inside the opcode's parentheses."""
  start = line.index(f' {opcode}(') + len(opcode) + 2
  depth, end = 1, start
  while depth:
    depth += {'(': 1, ')': -1}.get(line[end], 0)
    end += 1
  return re.findall(r'%([\w.\-]+)', line[start:end - 1])


def parse_hlo(hlo_text: str) -> tuple[dict[str, Instruction], dict[str, list[str]]]:
  """Instructions by name, and the instruction names of each computation, of an HLO module."""
  instructions, computations, current = {}, {}, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = computations.setdefault(m.group(1), [])
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, shape, opcode = m.groups()
      instructions[name] = Instruction(name, _dims(shape), opcode, line)
      current.append(name)
  return instructions, computations


def _attr_dims(line: str, attr: str) -> list[int]:
  m = re.search(attr + r'=\{([\d,]*)\}', line)
  return [int(d) for d in m.group(1).split(',') if d] if m else []


def matmul_flops(inst: Instruction, instructions: dict[str, Instruction]) -> float:
  """FLOPs of a dot or convolution: 2 x output elements x elements contracted per output.

  Padded positions of a convolution's window are counted (XLA's cost analysis skips them),
  so convolutions with padding are slightly over-counted.
  """
  operands = [instructions.get(n) for n in _operands(inst.line, inst.opcode)]
  if inst.dims is None or len(operands) < 2 or any(o is None or o.dims is None
                                                   for o in operands[:2]):
    return 0.0
  lhs, rhs = operands[0].dims, operands[1].dims
  if inst.opcode == 'dot':
    contracted = math.prod(lhs[d] for d in _attr_dims(inst.line, 'lhs_contracting_dims'))
  else:  # convolution: the kernel's elements per output feature (window x input features).
    labels = re.search(r'dim_labels=\w+_(\w+)->', inst.line).group(1)
    contracted = math.prod(rhs) / rhs[labels.index('o')]
  return 2.0 * math.prod(inst.dims) * contracted


@dataclasses.dataclass
class OpInfo:
  """What a top-level op (an executed thunk) is: its category, FLOPs and model path, and
  whether it holds a convolution's weight gradient."""
  category: str
  flops: float
  source: str
  weight_grad: bool = False


def is_weight_grad(inst: Instruction) -> bool:
  """Whether a convolution computes a kernel's gradient: its window spans the activations,
  so it is larger than its output's spatial extent (a 3x3 kernel's gradient over a 40x8 map
  has a 40x8 window and a 3x3 output). CPU backends often run these far below peak."""
  if inst.opcode != 'convolution' or inst.dims is None:
    return False
  window = re.search(r'window=\{size=([\dx]+)', inst.line)
  out_labels = re.search(r'->(\w+)', inst.line)
  if window is None or out_labels is None:
    return False
  spatial = [inst.dims[i] for i, c in enumerate(out_labels.group(1)) if c.isdigit()]
  return math.prod(int(w) for w in window.group(1).split('x')) > math.prod(spatial)


# Path components that name a transformation's scope rather than a module.
_SCOPES = frozenset({'while', 'body', 'cond', 'checkpoint', 'remat', 'rematted_computation',
                     'pjit', 'closed_call', 'vmap', 'shard_map', 'custom_jvp_call',
                     'custom_vjp_call', 'cond_fun', 'body_fun', 'branch_0_fun',
                     'branch_1_fun'})


def source_of(op_name: str, depth: int = 3) -> str:
  """'fwd'/'bwd' and the first `depth` module names of an HLO op_name, e.g.
  'jit(train_step)/transpose(jvp(GMSCAVP))/GMSCAVP.embed_video/video_encoder/stem/add'
  -> 'bwd GMSCAVP.embed_video/video_encoder/stem'."""
  parts = op_name.split('/')
  direction = 'bwd' if any(p.startswith('transpose(') for p in parts) else 'fwd'
  names = [re.sub(r'^(?:\w+\()+([^()]*)\)+$', r'\1', p) for p in parts[1:-1]]
  names = [n for n in names if n and n not in _SCOPES]
  if len(names) > 1 and names[1].startswith(names[0] + '.'):
    names = names[1:]  # 'GMSCAVP', 'GMSCAVP.embed_video': the method's name says both.
  return f"{direction} {'/'.join(names[:depth]) or parts[-1]}"


def _source(insts: list[Instruction], instructions: dict[str, Instruction]) -> str:
  """The model path of an op: from its own metadata, else (marked '~') from its operands'
  up to two levels up: a fused convolution often has none, and for a weight gradient the
  operands are the forward activations, so the path is right but the direction may not be."""
  frontier = insts
  for level in range(3):
    for inst in frontier:
      m = re.search(r'op_name="([^"]+)"', inst.line)
      if m:
        return ('~' if level else '') + source_of(m.group(1))
    frontier = [instructions[n] for i in frontier if i.opcode != 'parameter'
                for n in _operands(i.line, i.opcode) if n in instructions]
  return '-'


def classify(name: str, instructions: dict[str, Instruction],
             computations: dict[str, list[str]]) -> OpInfo | None:
  """OpInfo of the executed op `name`; None for control flow (and names not in the HLO)."""
  inst = instructions.get(name)
  if inst is None or inst.opcode in _CONTROL_OPS:
    return None
  body = [inst]
  if inst.opcode == 'fusion':
    callee = re.search(r'calls=%([\w.\-]+)', inst.line)
    body = [instructions[n] for n in computations.get(callee.group(1), [])] if callee else []
  opcodes = {b.opcode for b in body}
  source = _source([inst] + body, instructions)
  if opcodes & {'dot', 'convolution'}:
    flops = sum(matmul_flops(b, instructions) for b in body
                if b.opcode in ('dot', 'convolution'))
    return OpInfo('matmul/conv', flops, source, any(is_weight_grad(b) for b in body))
  if 'fft' in opcodes:
    return OpInfo('fft', 0.0, source)
  if any(o.startswith(_COLLECTIVE_OPS) for o in opcodes):
    return OpInfo('collective', 0.0, source)
  if opcodes and opcodes <= _LAYOUT_OPS:
    return OpInfo('layout', 0.0, source)
  if inst.opcode in ('custom-call', 'rng-bit-generator', 'infeed', 'outfeed'):
    return OpInfo('other', 0.0, source)
  return OpInfo('elementwise', 0.0, source)


def op_times(xplane_path: str, module_name: str) -> tuple[dict[str, float], dict[str, int]]:
  """Total seconds and number of executions (events) per HLO op of `module_name` in a trace."""
  seconds, calls = collections.Counter(), collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get('hlo_module') == module_name and 'hlo_op' in stats:
          seconds[stats['hlo_op']] += event.duration_ns * 1e-9
          calls[stats['hlo_op']] += 1
  return dict(seconds), dict(calls)


@dataclasses.dataclass
class Breakdown:
  """Per-step times of a profiled program and the MFU's factors (see the module doc)."""
  step_s: float
  peak_flops_per_sec: float
  by_category: dict[str, float]  # Seconds of op time per step.
  matmul_flops: float  # Per step.
  # (name, info, seconds per step, FLOPs per step), slowest first.
  top_ops: list[tuple[str, OpInfo, float, float]]
  by_source: dict[str, float]  # Seconds of op time per step per module, fwd + bwd.

  @property
  def op_s(self) -> float:
    return sum(self.by_category.values())

  @property
  def matmul_time(self) -> float:
    return self.by_category.get('matmul/conv', 0.0) / self.step_s

  @property
  def matmul_efficiency(self) -> float:
    matmul_s = self.by_category.get('matmul/conv', 0.0)
    return self.matmul_flops / (matmul_s * self.peak_flops_per_sec) if matmul_s else 0.0

  def report(self, top: int = 12) -> str:
    """A text table of the breakdown."""
    mfu = self.matmul_time * self.matmul_efficiency
    lines = [
        f'step {self.step_s * 1e3:.1f} ms; op time {self.op_s * 1e3:.1f} ms per step, summed '
        'over threads',
        f'MFU of the matmul FLOPs {100 * mfu:.1f}% = matmul time {100 * self.matmul_time:.1f}% '
        f'of the step x matmul efficiency {100 * self.matmul_efficiency:.1f}% of peak',
        f"{'category':44s} {'ms/step':>9s} {'share':>7s}"]
    for cat in CATEGORIES:
      if cat in self.by_category:
        s = self.by_category[cat]
        lines.append(f'{cat:44s} {s * 1e3:9.2f} {100 * s / self.op_s:6.1f}%')
      if cat == 'matmul/conv':
        for label, grad in (('  of which conv weight gradients', True),
                            ('  the other matmuls', False)):
          part = [(t, f) for _, info, t, f in self.top_ops
                  if info.weight_grad == grad and info.category == cat]
          t, f = sum(p[0] for p in part), sum(p[1] for p in part)
          if t:
            lines.append(f'{label:44s} {t * 1e3:9.2f} {100 * t / self.op_s:6.1f}%  at '
                         f'{100 * f / (t * self.peak_flops_per_sec):.1f}% of peak')
    lines.append(f"{'module (forward + backward)':44s} {'ms/step':>9s} {'share':>7s}")
    for src, s in sorted(self.by_source.items(), key=lambda kv: -kv[1])[:top]:
      lines.append(f'{src[:44]:44s} {s * 1e3:9.2f} {100 * s / self.op_s:6.1f}%')
    lines.append(f"{'slowest ops':28s} {'category':12s} {'ms/step':>8s} {'% of peak':>10s}  "
                 'model path')
    for name, info, s, flops in self.top_ops[:top]:
      eff = f'{100 * flops / (s * self.peak_flops_per_sec):9.1f}%' if flops else ''
      lines.append(f'{name[:28]:28s} {info.category:12s} {s * 1e3:8.2f} {eff:>10s}  '
                   f'{info.source}')
    return '\n'.join(lines)


def breakdown(seconds: dict[str, float], calls: dict[str, int], hlo_text: str,
              num_steps: int, step_s: float, peak_flops_per_sec: float) -> Breakdown:
  """Breakdown of `num_steps` calls from their op times and counts and the program's HLO."""
  instructions, computations = parse_hlo(hlo_text)
  by_category, by_source, ops = collections.Counter(), collections.Counter(), []
  matmul = 0.0
  for name, total in seconds.items():
    info = classify(name, instructions, computations)
    if info is None:
      continue
    per_step = total / num_steps
    by_category[info.category] += per_step
    # Per module (two names deep), forward and backward together.
    by_source['/'.join(info.source.split(' ', 1)[-1].split('/')[:2])] += per_step
    # An op in a loop body runs several times per step (one event per run).
    flops = info.flops * calls[name] / num_steps
    ops.append((name, info, per_step, flops))
    matmul += flops
  ops.sort(key=lambda o: -o[2])
  return Breakdown(step_s, peak_flops_per_sec, dict(by_category), matmul, ops,
                   dict(by_source))


def profile(run_once: Callable[[], Any], hlo_text: str, num_steps: int,
            peak_flops_per_sec: float, logdir: str | None = None) -> Breakdown:
  """Traces `num_steps` calls of `run_once` (one call of the compiled program of `hlo_text`,
  returning what to wait on) and returns their Breakdown.

  `run_once` threads any donated state itself (e.g. a closure over the train state). The
  trace is written under `logdir` (a temporary directory if None), for TensorBoard or XProf.
  """
  logdir = logdir or tempfile.mkdtemp(prefix='gmscavp_profile_')
  jax.block_until_ready(run_once())  # Warm-up outside the trace.
  with jax.profiler.trace(logdir):
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = run_once()
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / num_steps
  paths = [os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs
           if f.endswith('.xplane.pb')]
  module = re.search(r'^HloModule ([\w.\-]+)', hlo_text, re.M).group(1)
  seconds, calls = op_times(max(paths, key=os.path.getmtime), module)
  return breakdown(seconds, calls, hlo_text, num_steps, step_s, peak_flops_per_sec)
