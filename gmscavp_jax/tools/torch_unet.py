"""The MSD UNet (models/unet.py) re-implemented in PyTorch, for tools/torch_sidebyside.py.

Built from the same config fields as `unet.build_unet` (config.unet.*, data.num_frames) and
computing the same function: x (B,Ta,F), t (B,), video scales [(B,T_l,S_l,D)]_l and an
optional drop mask (B,) -> (B,Ta,F). It computes channels-first (NCHW, torch's native conv
layout); GroupNorm and LayerNorm use Flax's epsilon (1e-6), gelu its tanh approximation.
Each torch parameter is one Flax leaf, named by its Flax path (tools/torch_layout.py), so
`load_flax_params` copies a Flax params tree in and `flax_grads` reads gradients back out.

Needs torch (requirements-torch.txt, `pip install -e '.[torch]'`); nothing else in the
package imports this module. The label oracle (unet.label_condition) is not re-implemented.
"""

import math
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gmscavp_jax.models import clip_time
from gmscavp_jax.tools import torch_layout

EPS = 1e-6  # Flax's GroupNorm and LayerNorm epsilon.


def _param(*shape: int) -> nn.Parameter:
  # Values come from a Flax tree (load_flax_params); zeros until then.
  return nn.Parameter(torch.zeros(*shape))


def _linear(i: int, o: int, bias: bool = True) -> nn.Linear:
  return nn.Linear(i, o, bias=bias)


def _conv1x1(i: int, o: int) -> nn.Conv2d:
  return nn.Conv2d(i, o, 1)


class Proj(nn.Module):
  """Holds one conv as `.proj` (Flax's Patchify / Upsample keep their Dense as 'proj')."""

  def __init__(self, conv: nn.Conv2d):
    super().__init__()
    self.proj = conv


class ResBlock(nn.Module):
  """unet_blocks.ResBlock, NCHW: x (B,C,X,Y), emb (B,E) -> (B,features,X,Y)."""

  def __init__(self, c: int, features: int, groups: int, emb_dim: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(groups, c, eps=EPS)
    self.conv1 = nn.Conv2d(c, features, 3, padding=1)
    self.emb_proj = _linear(emb_dim, features)
    self.norm2 = nn.GroupNorm(groups, features, eps=EPS)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)
    self.skip = _conv1x1(c, features) if c != features else None

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.emb_proj(emb)[:, :, None, None]
    h = self.conv2(F.silu(self.norm2(h)))
    return (x if self.skip is None else self.skip(x)) + h


class Downsample(nn.Module):
  """layers.Downsample2D: GN -> gelu -> 2x2 stride-2 conv (the patch merge), (B,C,X,Y) ->
  (B,features,X/2,Y/2)."""

  def __init__(self, c: int, features: int, groups: int):
    super().__init__()
    self.norm = nn.GroupNorm(groups, c, eps=EPS)
    self.merge = Proj(nn.Conv2d(c, features, 2, stride=2))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(self.norm(x), approximate='tanh')
    h = F.pad(h, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    return self.merge.proj(h)


class SelfAttention(nn.Module):
  """unet_blocks.SelfAttention over the X*Y positions of (B,C,X,Y)."""

  def __init__(self, c: int, heads: int, groups: int):
    super().__init__()
    self.heads = heads
    self.norm = nn.GroupNorm(groups, c, eps=EPS)
    self.qkv = _linear(c, 3 * c)
    self.out = _linear(c, c)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, sx, sy = x.shape
    h = self.norm(x).flatten(2).transpose(1, 2)  # (B,N,C), positions x-major as in Flax.
    q, k, v = (_heads(a, self.heads) for a in self.qkv(h).chunk(3, dim=-1))
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, sx * sy, c)
    return x + self.out(o).transpose(1, 2).reshape(b, c, sx, sy)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
  """(B,N,C) -> (B,H,N,C/H), scaled_dot_product_attention's layout."""
  b, n, c = x.shape
  return x.reshape(b, n, heads, c // heads).transpose(1, 2)


class CrossAttention(nn.Module):
  """unet_blocks.CrossAttention from (B,C,X,Y) to video tokens (B,N,D); a dropped example
  attends to one zero key whose value is the learned null."""

  def __init__(self, c: int, d: int, heads: int):
    super().__init__()
    self.heads = heads
    self.norm = nn.LayerNorm(c, eps=EPS)
    self.query_time = _linear(clip_time.CLIP_TIME_DIM, c, bias=False)
    self.q, self.k, self.v = _linear(c, c), _linear(d, c), _linear(d, c)
    self.null_value = _param(c)
    self.out = _linear(c, c)

  def forward(self, x: torch.Tensor, query_time: torch.Tensor, context: torch.Tensor,
              drop: torch.Tensor | None) -> torch.Tensor:
    b, c, sx, sy = x.shape
    h = self.norm(x.permute(0, 2, 3, 1)) + self.query_time(query_time)[None, :, None, :]
    q = _heads(self.q(h.reshape(b, sx * sy, c)), self.heads)
    k, v = self.k(context), self.v(context)
    if drop is not None:
      keep = ~drop[:, None, None]
      k = torch.where(keep, k, torch.zeros((), dtype=k.dtype))
      v = torch.where(keep, v, self.null_value)
    o = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads))
    o = self.out(o.transpose(1, 2).reshape(b, sx * sy, c))
    return x + o.transpose(1, 2).reshape(b, c, sx, sy)


class VideoTokens(nn.Module):
  """unet_blocks.VideoTokens: a scale (B,T_l,S_l,D) -> tokens (B,T_l*S_l,D)."""

  def __init__(self, t: int, s: int, d: int, samples: int):
    super().__init__()
    self.scale_embedding, self.time_embedding = _param(d), _param(t, d)
    self.space_embedding = _param(s, d)
    self.clip_time = _linear(clip_time.CLIP_TIME_DIM, d, bias=False)
    self.norm = nn.LayerNorm(d, eps=EPS)
    self.register_buffer('code', torch.from_numpy(
        clip_time.clip_time_encoding(t, samples / t, samples)), persistent=False)

  def forward(self, video: torch.Tensor) -> torch.Tensor:
    b, t, s, d = video.shape
    pos = self.scale_embedding + self.time_embedding[:, None] + self.space_embedding[None]
    x = self.norm(video + pos + self.clip_time(self.code)[:, None, :])
    return x.reshape(b, t * s, d)


class TorchUNet(nn.Module):
  """models/unet.UNet in PyTorch: x (B,Ta,F), t (B,), video scales [(B,T_l,S_l,D)], drop (B,)
  bool or None -> (B,Ta,F) float32. Conditioned only (video scales are required)."""

  def __init__(self, config: ml_collections.ConfigDict, video_shapes: Sequence[tuple]):
    """`video_shapes`: the (T_l,S_l,D) of each video scale (steps.dummy_video_scales)."""
    super().__init__()
    u = config.unet
    if u.label_condition:
      raise ValueError('the torch UNet does not implement unet.label_condition')
    self.widths, self.attention_levels = tuple(u.widths), tuple(u.attention_levels)
    self.level_scales, self.blocks = tuple(u.level_scales), u.blocks_per_level
    self.stem_patch, self.aligned = tuple(u.stem_patch), u.aligned_conditioning
    self.video_frames, self.heads = config.data.num_frames, u.num_heads
    w0, g, n = self.widths[0], u.num_groups, len(self.widths)
    emb_dim, d = 4 * w0, video_shapes[-1][-1]
    st, sf = self.stem_patch
    self.time_mlp1, self.time_mlp2 = _linear(w0, emb_dim), _linear(emb_dim, emb_dim)
    self.null_global = _param(emb_dim)
    self.global_norm, self.global_proj = nn.LayerNorm(d, eps=EPS), _linear(d, emb_dim)
    self.stem = Proj(nn.Conv2d(1, w0, (st, sf), stride=(st, sf)))
    if self.aligned:
      self.null_aligned = _param(w0)
      self.aligned_norm = nn.LayerNorm(d, eps=EPS)
      self.aligned_proj = _linear(d, w0)
    self.attended = sorted(set(self.attention_levels) | {n - 1})
    for l in sorted({self.level_scales[i] % len(video_shapes) for i in self.attended}):
      self.add_module(f'tokens_{l}', VideoTokens(*video_shapes[l], samples=self.video_frames))
    for prefix, c in self._attention_prefixes():
      self.add_module(f'{prefix}_self_attn', SelfAttention(c, self.heads, g))
      self.add_module(f'{prefix}_cross_attn', CrossAttention(c, d, self.heads))
    c = w0
    skips = []
    for i, width in enumerate(self.widths):
      if i > 0:
        self.add_module(f'down{i}', Downsample(c, width, g))
        c = width
      for j in range(self.blocks):
        self.add_module(f'down{i}_block{j}', ResBlock(c, width, g, emb_dim))
        c = width
        skips.append(c)
    self.mid_block0 = ResBlock(c, c, g, emb_dim)
    self.mid_block1 = ResBlock(c, c, g, emb_dim)
    for i in reversed(range(n)):
      for j in range(self.blocks):
        self.add_module(f'up{i}_block{j}', ResBlock(c + skips.pop(), self.widths[i], g,
                                                    emb_dim))
        c = self.widths[i]
      if i > 0:
        self.add_module(f'up{i}_upsample', Proj(_conv1x1(c, 4 * self.widths[i - 1])))
        c = self.widths[i - 1]
    self.norm_out = nn.GroupNorm(g, c, eps=EPS)
    self.out_proj = _conv1x1(c, st * sf)
    if u.pixel_skip:
      self.pixel_skip = _linear(emb_dim, config.audio.n_mels)
    self._constants = {}

  def _attention_prefixes(self):
    n = len(self.widths)
    names = [(f'down{i}', self.widths[i]) for i in self.attention_levels]
    names.append(('mid', self.widths[-1]))
    return names + [(f'up{i}', self.widths[i]) for i in self.attention_levels]

  def _constant(self, key, make) -> torch.Tensor:
    """The NumPy constants of one input geometry (clip-time codes, resampling), cached."""
    if key not in self._constants:
      with torch.inference_mode(False):  # Also usable by a later call that trains.
        self._constants[key] = torch.from_numpy(np.asarray(make(), np.float32))
    return self._constants[key]

  def forward(self, x: torch.Tensor, t: torch.Tensor, video_scales: Sequence[torch.Tensor],
              drop: torch.Tensor | None = None) -> torch.Tensor:
    """x (B,Ta,F), t (B,) timesteps, video scales [(B,T_l,S_l,D)], drop (B,) bool or None
    -> (B,Ta,F) float32, the prediction of models/unet.UNet with the same params."""
    b, ta, f = x.shape
    st, sf = self.stem_patch
    n, w0 = len(self.widths), self.widths[0]
    emb = self.time_mlp2(F.silu(self.time_mlp1(_sinusoid(t.float(), w0))))
    cond = self.global_proj(self.global_norm(video_scales[-1].mean(dim=(1, 2))))
    if drop is not None:
      cond = torch.where(drop[:, None], self.null_global, cond)
    emb = F.silu(emb + cond)
    tokens = {l: getattr(self, f'tokens_{l}')(video_scales[l])
              for l in sorted({self.level_scales[i] % len(video_scales)
                               for i in self.attended})}
    mult_t, mult_f = st * 2**(n - 1), sf * 2**(n - 1)
    h = F.pad(x, (0, -f % mult_f, 0, -ta % mult_t))[:, None]
    h = self.stem.proj(h)  # (B,w0,Ta',F')
    if self.aligned:
      frames = self.aligned_proj(self.aligned_norm(video_scales[0].mean(dim=2)))
      m = self._constant(('resample', h.shape[2], ta, frames.shape[1]),
                         lambda: clip_time.linear_resample_matrix(
                             h.shape[2], st, ta, frames.shape[1], self.video_frames))
      aligned = torch.einsum('st,btc->bcs', m, frames)
      if drop is not None:
        aligned = torch.where(drop[:, None, None], self.null_aligned[:, None], aligned)
      h = h + aligned[:, :, :, None]

    def attention(h, level, prefix):
      stride = st * 2**level
      code = self._constant(('time', h.shape[2], stride, ta),
                            lambda: clip_time.clip_time_encoding(h.shape[2], stride, ta))
      h = getattr(self, f'{prefix}_self_attn')(h)
      context = tokens[self.level_scales[level] % len(video_scales)]
      return getattr(self, f'{prefix}_cross_attn')(h, code, context, drop)

    skips = []
    for i in range(n):
      if i > 0:
        h = getattr(self, f'down{i}')(h)
      for j in range(self.blocks):
        h = getattr(self, f'down{i}_block{j}')(h, emb)
        if i in self.attention_levels and j == self.blocks - 1:
          h = attention(h, i, f'down{i}')
        skips.append(h)
    h = self.mid_block0(h, emb)
    h = attention(h, n - 1, 'mid')
    h = self.mid_block1(h, emb)
    for i in reversed(range(n)):
      for j in range(self.blocks):
        h = getattr(self, f'up{i}_block{j}')(torch.cat([h, skips.pop()], dim=1), emb)
      if i in self.attention_levels:
        h = attention(h, i, f'up{i}')
      if i > 0:
        h = F.pixel_shuffle(getattr(self, f'up{i}_upsample').proj(h), 2)
    h = self.out_proj(F.silu(self.norm_out(h)))  # (B,st*sf,Ta',F'), channels (p,q).
    sx, sy = h.shape[2:]
    out = h.reshape(b, st, sf, sx, sy).permute(0, 3, 1, 4, 2).reshape(b, sx * st, sy * sf)
    out = out[:, :ta, :f]
    if hasattr(self, 'pixel_skip'):
      out = out + self.pixel_skip(emb)[:, None, :] * x
    return out


def _sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
  """clip_time.sinusoidal_embedding in torch: (B,) -> (B,dim), [cos | sin]."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  angles = t[:, None] * freqs
  return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def build_torch_unet(config: ml_collections.ConfigDict,
                     video_shapes: Sequence[tuple]) -> TorchUNet:
  """TorchUNet from config.unet.* and data.num_frames (the fields unet.build_unet reads);
  `video_shapes` are the (T_l,S_l,D) of the video scales it is conditioned on."""
  return TorchUNet(config, video_shapes)


def load_flax_params(model: TorchUNet, params: Mapping,
                     stem_patch: tuple[int, int]) -> None:
  """Copies a Flax UNet params tree into `model` (strict: every leaf, every parameter)."""
  arrays = torch_layout.flax_to_torch(params, stem_patch)
  state = {k: torch.from_numpy(v) for k, v in arrays.items()}
  model.load_state_dict(state, strict=True)


def flax_grads(model: TorchUNet, like: Mapping) -> dict:
  """The .grad of every parameter of `model`, as a tree shaped like the Flax params `like`."""
  grads = {k: p.grad.detach().numpy() for k, p in model.named_parameters()}
  return torch_layout.torch_to_flax(grads, like)


def num_params(model: nn.Module) -> int:
  """Scalars in the parameters of a torch module."""
  return sum(p.numel() for p in model.parameters())
