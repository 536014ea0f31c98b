"""Training phases as data: which losses a compiled train step computes and what it updates.

A phase is a stage of the schedule (diffusion.training) plus whether the step also trains the
a2v denoiser (train.bidirectional_interval, core/bidirectional.py):

  stage        loss                                      updates
  contrastive  msa_weight L_MSA                          encoders
  joint        msa_weight L_MSA + msd_weight L_MSD       encoders and denoiser
  generator    msd_weight L_MSD on frozen video scales   denoiser
  ... + a2v    the same plus a2v.loss_weight L_a2v       the same and video_denoiser

'frozen' training runs 'contrastive' for its first diffusion.encoder_steps steps
(`encoder_stage_end`), then 'generator'; 'joint' runs 'joint' throughout; 'none' runs
'contrastive' throughout. Phases are hashable (one compiled step each) and print as
'contrastive', 'joint', 'generator', 'joint+a2v', 'generator+a2v'.
"""

import dataclasses

import ml_collections

STAGES = ('contrastive', 'joint', 'generator')


@dataclasses.dataclass(frozen=True, order=True)
class Phase:
  """One compiled train step's phase: its `stage` (one of STAGES) and whether it trains a2v."""
  stage: str
  a2v: bool = False

  def __post_init__(self):
    if self.stage not in STAGES:
      raise ValueError(f'stage={self.stage!r}: expected one of {STAGES}')
    if self.a2v and not self.msd:
      raise ValueError(f'a2v=True in the {self.stage!r} stage: only the stages that train '
                       'a generator take a2v updates')

  @property
  def msa(self) -> bool:
    """Whether the loss includes L_MSA (the encoders train contrastively)."""
    return self.stage in ('contrastive', 'joint')

  @property
  def msd(self) -> bool:
    """Whether the loss includes L_MSD (the MSD denoiser trains)."""
    return self.stage in ('joint', 'generator')

  @property
  def groups(self) -> tuple[str, ...]:
    """The parameter groups the phase updates, e.g. ('encoders', 'denoiser')."""
    groups = ('encoders',) if self.msa else ()
    groups += ('denoiser',) if self.msd else ()
    return groups + (('video_denoiser',) if self.a2v else ())

  def with_a2v(self) -> 'Phase':
    """The same stage on a step that also trains the a2v denoiser."""
    return dataclasses.replace(self, a2v=True)

  def __str__(self) -> str:
    return self.stage + ('+a2v' if self.a2v else '')


CONTRASTIVE = Phase('contrastive')
JOINT = Phase('joint')
GENERATOR = Phase('generator')


def encoder_stage_end(config: ml_collections.ConfigDict) -> int | None:
  """The last step of 'frozen' training's contrastive stage (diffusion.encoder_steps).

  None for 'joint' and 'none' training, whose phase never changes. The generator stage
  starts at the step after it; encoder_steps >= train.num_steps is allowed (a run stopped
  early and resumed later with more steps reaches the generator stage then).
  """
  d = config.diffusion
  return d.encoder_steps if d.training == 'frozen' else None
