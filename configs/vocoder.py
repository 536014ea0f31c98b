"""The neural vocoder's section of every experiment's config (`config.vocoder`).

The neural vocoder (HiFi-GAN family, models/vocoder_gan.py), trained once per dataset and
kept beside the evaluators; `generate`, the demo and `evaluate` use it with
--vocoder=neural (or 'auto' once it is trained). Griffin-Lim stays the fallback.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The full-size vocoder."""
  v = ml_collections.ConfigDict()
  v.seed = 0
  v.width = 512  # ConvNeXt blocks at the log-mel frame rate (Vocos' sizes).
  v.num_blocks = 8
  # Griffin-Lim projections of the predicted STFT (its magnitude kept) before the inverse
  # STFT, trained through: 0 is the network alone. 4 took the log-mel L1 of whole test clips
  # from 0.245 to 0.187 at :runlocal (docs/generation.md).
  v.projections = 4
  # Projections when the commands vocode (not part of the trained network's identity): the
  # network's phase is a better start than Griffin-Lim's random one. With 32, the :runlocal
  # vocoder's log-mel L1 is 0.139 against Griffin-Lim's 0.155 in 32 iterations, at about
  # its time; Griffin-Lim catches up at 64 (docs/generation.md).
  v.inference_projections = 32
  v.periods = (2, 3, 5, 7, 11)
  v.num_scales = 3
  v.disc_channels = (32, 64, 128, 256)
  # Training crops of log-mel frames: whole clips (10 s at 8 kHz), the length the commands
  # vocode. Trained on 16-frame crops, the phase needs the crop's edge as its time reference
  # and whole clips came out worse (docs/generation.md).
  v.segment_frames = 400
  v.batch_size = 16
  v.num_steps = 50_000
  v.learning_rate = 2e-4
  # Steps of reconstruction loss alone before the discriminator joins: a generator that
  # already follows the log-mel gives the GAN something to refine.
  v.gan_start_step = 5_000
  v.mel_weight = 45.0  # HiFi-GAN's weights: log-mel L1 45, feature matching 2.
  v.feature_weight = 2.0
  # Log-magnitude STFT L1 at these (n_fft, hop) besides the front end's log-mel (sharper
  # transients than the 25 ms mel frames alone teach).
  v.stft_sizes = ((128, 32), (1024, 256))
  v.stft_weight = 15.0
  v.num_check_clips = 512  # Test clips of its self-check against Griffin-Lim.
  return v


def apply_runlocal(v: ml_collections.ConfigDict) -> None:
  """Shrinks vocoder section `v` in place to the :runlocal size (minutes on 2 CPU cores)."""
  v.width = 128
  v.num_blocks = 4
  v.num_scales = 1
  v.disc_channels = (16, 32, 64)
  v.segment_frames = 80  # Whole 2 s clips.
  v.num_steps = 3_000
  v.learning_rate = 1e-3
  # No GAN steps at :runlocal: on 2 cores a discriminator step costs ~15x a generator step
  # and did not lower the log-mel distance (docs/generation.md); full size keeps them.
  v.gan_start_step = 3_000
  v.num_check_clips = 256
