"""Flax <-> PyTorch parameter layouts of the MSD UNet, in NumPy (no torch import).

`tools/torch_unet.py` re-implements the UNet in PyTorch with one torch parameter per Flax
leaf, named by the Flax path joined with '.' ('kernel' and 'scale' become 'weight'). The
torch model computes channels-first (NCHW), so some Flax Dense kernels are convolutions
there; this module turns each leaf into the torch layout and back:

- 'conv': a Flax conv kernel (KH,KW,I,O) (HWIO) -> torch (O,I,KH,KW) (OIHW).
- 'linear': a Dense kernel (I,O) -> nn.Linear's (O,I).
- 'pointwise': a Dense kernel (I,O) applied at every pixel -> a 1x1 conv (O,I,1,1).
- 'patch': a `layers.Patchify` Dense kernel (p*q*C,O), rows ordered (p,q,C) -> the
  equivalent stride-(p,q) conv (O,C,p,q).
- 'shuffle': `unet_blocks.Upsample`'s Dense (I,4*F), columns ordered (i,j,F) for the 2x2
  block -> a 1x1 conv (4*F,I,1,1) whose channels are ordered (F,i,j), as
  torch.nn.functional.pixel_shuffle reads them (its bias is reordered the same way).
- 'same': anything else (biases, norm scales, embeddings, learned nulls) as it is.
"""

from collections.abc import Mapping

import numpy as np

# Flax module names (the path element before 'kernel') whose Dense kernel is a 1x1 conv in
# the torch model, and the patchify / upsample modules.
POINTWISE = ('skip', 'out_proj')


def leaf_kind(path: tuple[str, ...], shape: tuple[int, ...]) -> str:
  """The layout rule of the Flax leaf at `path` (module names..., leaf name) of `shape`."""
  name = path[-1]
  owner = path[-3] if len(path) >= 3 else ''
  if name == 'kernel' and len(shape) == 4:
    return 'conv'
  if len(path) >= 2 and path[-2] == 'proj' and owner.endswith('_upsample'):
    return 'shuffle'
  if name == 'kernel' and len(path) >= 2 and path[-2] == 'proj' and owner in ('stem', 'merge'):
    return 'patch'
  if name == 'kernel' and len(path) >= 2 and path[-2] in POINTWISE:
    return 'pointwise'
  if name == 'kernel':
    return 'linear'
  return 'same'


def torch_name(path: tuple[str, ...]) -> str:
  """The torch state_dict key of a Flax leaf: ('a', 'b', 'kernel') -> 'a.b.weight'."""
  last = {'kernel': 'weight', 'scale': 'weight'}.get(path[-1], path[-1])
  return '.'.join(path[:-1] + (last,))


def patch_size(path: tuple[str, ...], stem_patch: tuple[int, int]) -> tuple[int, int]:
  """(p,q) of a 'patch' leaf: the stem's patch, or Downsample2D's 2x2 merge."""
  return tuple(stem_patch) if path[-3] == 'stem' else (2, 2)


def to_torch_array(kind: str, x: np.ndarray, patch: tuple[int, int] | None = None
                   ) -> np.ndarray:
  """One Flax leaf `x` -> its torch layout under rule `kind` (module docstring)."""
  x = np.asarray(x)
  if kind == 'conv':
    return x.transpose(3, 2, 0, 1)
  if kind == 'linear':
    return x.T
  if kind == 'pointwise':
    return x.T[:, :, None, None]
  if kind == 'patch':
    p, q = patch
    c = x.shape[0] // (p * q)
    return x.reshape(p, q, c, x.shape[1]).transpose(3, 2, 0, 1)
  if kind == 'shuffle':
    if x.ndim == 1:  # Bias (4*F,): (i,j,F) -> (F,i,j).
      return x.reshape(2, 2, -1).transpose(2, 0, 1).reshape(-1)
    i = x.shape[0]
    return x.reshape(i, 2, 2, -1).transpose(3, 1, 2, 0).reshape(-1, i)[:, :, None, None]
  return x


def from_torch_array(kind: str, y: np.ndarray) -> np.ndarray:
  """Inverse of `to_torch_array`: a torch-layout array (e.g. a gradient) -> the Flax leaf."""
  y = np.asarray(y)
  if kind == 'conv':
    return y.transpose(2, 3, 1, 0)
  if kind == 'linear':
    return y.T
  if kind == 'pointwise':
    return y[:, :, 0, 0].T
  if kind == 'patch':
    o, c, p, q = y.shape
    return y.transpose(2, 3, 1, 0).reshape(p * q * c, o)
  if kind == 'shuffle':
    if y.ndim == 1:
      return y.reshape(-1, 2, 2).transpose(1, 2, 0).reshape(-1)
    w = y[:, :, 0, 0]  # (F*4, I), rows (F,i,j).
    f = w.shape[0] // 4
    return w.reshape(f, 2, 2, -1).transpose(3, 1, 2, 0).reshape(w.shape[1], 4 * f)
  return y


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def flax_to_torch(params: Mapping, stem_patch: tuple[int, int]) -> dict[str, np.ndarray]:
  """A Flax UNet params tree -> {torch state_dict key: float32 array in torch layout}.

  `stem_patch` is config.unet.stem_patch (the stem's 'patch' rule needs it).
  """
  out = {}
  for path, x in _leaves(params):
    kind = leaf_kind(path, np.shape(x))
    out[torch_name(path)] = np.ascontiguousarray(
        to_torch_array(kind, np.asarray(x, np.float32), patch_size(path, stem_patch)
                       if kind == 'patch' else None))
  return out


def torch_to_flax(arrays: Mapping[str, np.ndarray], like: Mapping) -> dict:
  """{torch key: array in torch layout} (e.g. gradients) -> a tree shaped like Flax `like`."""

  def build(tree, prefix):
    out = {}
    for k, v in tree.items():
      path = prefix + (k,)
      if isinstance(v, Mapping):
        out[k] = build(v, path)
      else:
        y = from_torch_array(leaf_kind(path, np.shape(v)), arrays[torch_name(path)])
        if y.shape != np.shape(v):
          raise ValueError(f'{torch_name(path)}: {y.shape} back from torch, Flax has '
                           f'{np.shape(v)}')
        out[k] = y
    return out

  return build(like, ())


def count(tree: Mapping) -> int:
  """Number of scalars in a params tree (nested mappings of arrays)."""
  return sum(int(np.size(x)) for _, x in _leaves(tree))
