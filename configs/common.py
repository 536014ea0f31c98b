"""Fields every gmscavp_jax experiment shares (DESIGN §7), with their full-size defaults.

Experiment files (`configs/cavp.py`, `configs/msa.py`, ...) start from `base_config()`,
change what makes the experiment, and call `apply_variant(config, arg)` so that
`--config=configs/msa.py:runlocal` gives the small CPU-sized variant of the same experiment.
A resolved config is checked by `gmscavp_jax/core/config_validation.py` before any work; the
measurements behind the values chosen here are in docs/config_notes.md. The neural
vocoder's section is built in `configs/vocoder.py`.
"""

import ml_collections
from ml_collections import config_dict

from configs import vocoder

# Sizes of the `runlocal` variant: a 2-core CPU trains it in minutes (DESIGN §4).
RUNLOCAL = dict(num_frames=16, fps=8.0, image_size=64)


def base_config() -> ml_collections.ConfigDict:
  """The full-size defaults (224x224 frames, 10 s clips at 8 kHz, batch 64, Adam 1e-4)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.experiment = 'base'  # Set by each experiment file; shown in logs and results.

  # Data. `synthetic` is the embedded procedural benchmark; anything else names a prepared
  # TFDS dataset under `data_dir` (made by `python -m gmscavp_jax.prepare`).
  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  # The synthetic world's seed (class looks, timbres and every clip). Apart from `seed`
  # (init, data order, sampling) so that an ablation's seeds share one benchmark.
  c.data.seed = 0
  c.data.data_dir = config_dict.placeholder(str)
  c.data.num_frames = 40  # T: video frames per clip.
  c.data.fps = 4.0  # Clip length in seconds = num_frames / fps.
  c.data.image_size = 224
  c.data.num_classes = 16  # K source classes of the synthetic world (a prepared set: its own).
  c.data.num_train_clips = 1_000_000  # Size of the synthetic train split (random access).
  # A weighted mixture of train sets (grain's MapDataset.mix), '' = data.name alone. Entries
  # NAME[OPTIONS]:WEIGHT, comma-separated, e.g.
  #   'synthetic:0.7,vggsound[data_dir=/data/tfds]:0.3'
  #   'synthetic[clips=4000]:0.5,synthetic[seed=1,clips=16000]:0.5'
  # OPTIONS (comma-separated key=value, all optional): data_dir (a prepared set's; default
  # data.data_dir), seed (synthetic: its world; default data.seed), clips (the first N train
  # clips; default data.num_train_clips for synthetic, the whole split for a prepared set).
  # WEIGHT: each source's share of the training examples (normalised to sum 1); a source
  # smaller than its share repeats. Sources share the config's geometry (frames, fps, image
  # size, sample rate) and classes. Evaluation always reads data.name's test split.
  c.data.mixture = ''
  c.data.max_onsets = 32  # Onset lists are padded with -1 to this length.
  c.data.worker_count = 2  # grain worker processes per host (0 = in the main process).
  c.data.prefetch_buffer_size = 4  # Batches each worker keeps ready.

  # Audio features (DESIGN §3): 8 kHz, 400-sample window, 200-sample hop, 128 mels, log power.
  c.audio = ml_collections.ConfigDict()
  c.audio.sample_rate = 8000
  c.audio.n_fft = 400
  c.audio.win_length = 400
  c.audio.hop_length = 200
  c.audio.n_mels = 128
  c.audio.fmin = 0.0
  c.audio.fmax = 4000.0
  c.audio.log_floor = 1e-5  # log(max(mel_power, log_floor)).

  # Model (DESIGN §3). Scale l pools time by scale_pools[l]; the last pool equals num_frames,
  # so the coarsest scale is the clip-level embedding (T_L = 1).
  c.model = ml_collections.ConfigDict()
  c.model.video_patch = 8  # Spatial stride of the video stem.
  # 'patchify' (one linear map per non-overlapping patch) or 'conv' (a patch/2 patchify and
  # an overlapping 3x3 stride-2 conv, which sees a small object's outline wherever the patch
  # grid cuts it).
  c.model.video_stem = 'patchify'
  c.model.video_widths = (64, 128, 256)  # Channels per video stage; stages halve H and W.
  c.model.audio_widths = (64, 128, 256)  # Channels per audio stage; stages halve Ta and F.
  c.model.audio_stem_patch = (2, 16)  # (time, mel) patch of the audio stem.
  c.model.blocks_per_stage = 2
  c.model.num_groups = 8  # GroupNorm groups (no BatchNorm: it couples examples).
  c.model.embed_dim = 256  # D: width of the shared embedding space.
  c.model.scale_pools = (1, 2, 4, 8, 40)
  c.model.scale_grids = (1, 1, 1, 1, 1)  # g_l: video spatial grid per scale (S_l = g_l^2).
  c.model.pyramid = 'pool'  # 'pool' (temporal pyramid pooling) or 'conv' (strided convs).

  # MSA loss (eq. 3-5).
  c.loss = ml_collections.ConfigDict()
  c.loss.scale_weights = ()  # lambda_l per scale; empty = 1 for every scale.
  c.loss.temperature_init = 0.07  # Learnable tau per scale.
  c.loss.temperature_min = 0.01
  c.loss.temperature_max = 1.0
  c.loss.adaptive_weights = True  # Eq. 5: softmax-over-time weights per segment.
  c.loss.adaptive_temperature = 0.1  # tau_w of eq. 5.
  c.loss.adaptive_stop_gradient = True
  # L = msa_weight * L_MSA + msd_weight * L_MSD (lambda_MSA, lambda_MSD of the joint configs).
  c.loss.msa_weight = 1.0
  c.loss.msd_weight = 1.0
  # Supervised source classes (not in the paper; for labelled sets such as VGGSound): L gains
  # video_class_weight times the sigmoid cross-entropy of a linear head on the clip-level
  # video embedding against data.labels, so the video encoder must name the sounding
  # sources. 0 = off (no head, no params).
  c.loss.video_class_weight = 0.0
  # Same-timing video negatives (not in the paper; docs/results.md): each audio segment's
  # softmax over videos gains its own clip's frames with the hue turned by one of
  # hue_negative_angles (negatives.hue_rotate; quarter turns keep the synthetic world's four
  # class hues): timing alone cannot tell them apart. One more video-encoder pass per step.
  c.loss.hue_negatives = False
  c.loss.hue_negative_angles = (90.0, 180.0, 270.0)
  # Cross-time term (not in the paper): L gains cross_time_weight times an InfoNCE between a
  # clip's audio and its video half a clip away at scale cross_time_scale (2+ segments;
  # contrastive.cross_time_loss): shared sources, no shared instants. 0 = off.
  c.loss.cross_time_weight = 0.0
  c.loss.cross_time_scale = 3
  c.loss.cross_time_steps = 0  # > 0: the term counts only in the first this many steps.
  # Contrastive diffusion (CMMD, papers/002 eq. 4): L_MSD gains cdiff_weight (eta) times a
  # ranking term that asks the denoiser's error with a misaligned video condition to exceed
  # its error with the true one, on the same noisy input: per example
  # tau * softplus((log e_true - log e_misaligned) / tau), tau = cdiff_temperature (a relative
  # margin: the term fades once the misaligned error is ~exp(3 tau) times the true one).
  # 0 = off: the program is exactly the one without it. The misaligned conditions are the
  # clip's own per-frame video features shifted by cdiff_{min,max}_shift_seconds either way,
  # spliced with another clip's at a random point, or another clip's (one of cdiff_kinds per
  # example; the same generators as the alignment evaluator's negatives, data/negatives.py).
  c.loss.cdiff_weight = 0.0
  c.loss.cdiff_temperature = 0.1
  c.loss.cdiff_min_shift_seconds = 0.2
  c.loss.cdiff_max_shift_seconds = 1.0
  c.loss.cdiff_kinds = ('shift', 'segment_swap', 'random_swap')

  # MSD denoiser (DESIGN §3): a UNet over the normalised log-mel, attending to the video scales.
  c.unet = ml_collections.ConfigDict()
  c.unet.widths = (128, 256, 384)  # Channels per level; each level halves time and mel.
  c.unet.attention_levels = (1, 2)  # Levels with self- and cross-attention.
  c.unet.level_scales = (0, 1, 2)  # Video scale each level cross-attends to (fine <-> fine).
  c.unet.blocks_per_level = 2
  c.unet.num_groups = 8
  c.unet.num_heads = 4
  c.unet.stem_patch = (1, 4)  # (time, mel) patch of the stem, un-patchified at the output.
  c.unet.aligned_conditioning = True  # Add per-frame video features on the UNet's time grid.
  # Examples per UNet call in the training loss (unet.apply_in_chunks): 0 the whole batch, -1
  # chunks of 8 on one CPU device (1.14x faster runlocal step there), the whole batch on
  # accelerators. Sampling calls the UNet on the whole batch.
  c.unet.batch_chunk = -1
  # Add g * x_t to the prediction, g (B, n_mels) projected from the timestep and condition
  # embedding (zero at init): a per-pixel path that a stem patch with as many pixels as
  # channels (runlocal's 2x16 into 32) cannot give the UNet (docs/results.md).
  c.unet.pixel_skip = False
  # Diagnostic oracle (issue 18): the denoiser also gets each clip's true sounding classes
  # (multi-hot, data.labels) added to its global condition, an upper bound for "the right
  # source". Training and evaluation only: generate and the demo have no labels and refuse it.
  c.unet.label_condition = False

  # Diffusion (eq. 6-7) and how the generator trains (Table 3).
  c.diffusion = ml_collections.ConfigDict()
  # 'joint': L_MSD from step 0 beside L_MSA, gradients into the encoders (msd.py, msa_msd.py).
  # 'frozen': a second stage: after `encoder_steps` contrastive steps, only the UNet trains,
  #   on the frozen encoders' features, until train.num_steps (cavp.py, msa.py).
  # 'none': contrastive pretraining alone (no generator).
  c.diffusion.training = 'joint'
  c.diffusion.encoder_steps = 50_000  # 'frozen' only: length of the contrastive stage.
  c.diffusion.stop_gradient = False  # 'joint': keep MSD gradients out of the encoders.
  c.diffusion.schedule = 'linear'  # 'linear' (latent diffusion) or 'cosine'.
  c.diffusion.num_timesteps = 1000
  c.diffusion.prediction = 'eps'  # 'eps' (paper default) or 'v'.
  # lambda_T of eq. 7 (the t = T term), on as the paper writes it (why: docs/config_notes.md).
  c.diffusion.terminal_weight = 1.0  # 0 for diffusion.objective 'flow' (no terminal step).
  # Min-SNR-gamma loss weighting over timesteps (objectives.min_snr_weight); 0 = eq. 7's
  # uniform weighting.
  c.diffusion.min_snr_gamma = 0.0
  c.diffusion.condition_dropout = 0.1  # Classifier-free guidance: P(null condition).
  # 'diffusion': eq. 6-7 (schedule, num_timesteps, prediction, terminal_weight); eval.sampler
  # 'ddpm', 'ddim' or 'dpmpp2m'. 'flow': rectified flow (x_t = (1 - t) x0 + t eps, the UNet
  # predicts eps - x0; num_timesteps only scales its time input); eval.sampler 'euler'/'heun'.
  c.diffusion.objective = 'diffusion'
  c.diffusion.flow_t_sampling = 'logit_normal'  # 'flow' only: t ~ 'logit_normal' or 'uniform'.
  # The UNet sees (log_mel - mel_mean) / mel_std: the synthetic clips' statistics, rounded
  # (docs/config_notes.md); set them to a real dataset's.
  c.diffusion.mel_mean = -7.5
  c.diffusion.mel_std = 2.5

  # Bidirectional diffusion (papers/002): an audio->video denoiser (models/video_unet.py)
  # that generates the clip's T frames at a2v.image_size^2 (area-downsampled from
  # data.image_size, pixels in [-1, 1]) conditioned on the shared audio encoder's scales.
  # It trains when train.bidirectional_interval > 0, with the diffusion.* schedule,
  # prediction and condition_dropout of the MSD denoiser.
  c.a2v = ml_collections.ConfigDict()
  c.a2v.image_size = 32  # Side of the generated frames; must divide data.image_size.
  c.a2v.widths = (64, 128, 256)  # Channels per level; each level halves height and width.
  c.a2v.attention_levels = (2,)  # Levels with self- and cross-attention (and the middle).
  # Audio scale each level cross-attends to; empty: level i attends to scale min(i, L-2),
  # the finest temporal scales (the clip level reaches every block through the embedding).
  c.a2v.level_scales = ()
  c.a2v.blocks_per_level = 2
  c.a2v.num_groups = 8
  c.a2v.num_heads = 4
  c.a2v.stem_patch = 2  # Square patch of the stem (3 * patch^2 <= widths[0]).
  c.a2v.aligned_conditioning = True  # Add per-frame audio features at every pixel.
  c.a2v.loss_weight = 1.0  # L += loss_weight * L_a2v on the steps that train it.
  # Examples of each batch the a2v loss uses (the first ones; 0 = the whole batch): the
  # a2v UNet costs about as much as the MSD UNet, and fewer examples keep k = 1 affordable.
  c.a2v.batch_size = 0
  # 'joint': keep the a2v loss's gradients out of the audio encoder (in 'frozen' training
  # the a2v denoiser trains in the generator phase on frozen audio features anyway).
  c.a2v.stop_gradient = False
  c.a2v.guidance = 3.0  # Classifier-free guidance scale of a2v sampling.
  # Test clips whose frames are generated (and scored: gen_a2v/*) at each evaluation.
  c.a2v.num_eval_clips = 16

  # Optimisation.
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100_000
  c.train.batch_size = 64  # Global batch, split over the mesh's 'data' axis.
  c.train.learning_rate = 1e-4
  c.train.encoder_lr_scale = 1.0  # The encoders' optimizer peaks at learning_rate times this.
  c.train.lr_schedule = 'cosine'  # 'cosine' (warmup then cosine decay) or 'constant'.
  c.train.warmup_steps = 1_000
  c.train.decay_steps = config_dict.placeholder(int)  # Defaults to num_steps.
  c.train.end_lr_fraction = 0.1  # Cosine decays to this fraction of the peak.
  c.train.weight_decay = 0.0  # > 0 switches Adam to AdamW.
  c.train.grad_clip_norm = 1.0  # 0 disables clipping.
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1_000
  c.train.keep_checkpoints = 3
  c.train.eval_every_steps = 5_000
  # Precision and memory (DESIGN §6): the compute dtype of both networks ('float32' or
  # 'bfloat16'; params, optimizer state and losses stay float32), and jax.checkpoint on every
  # residual block: 'none', 'full' (recompute the block in the backward pass) or 'save_dots'
  # (keep matmul/conv outputs, recompute the cheap elementwise ops).
  c.train.compute_dtype = 'float32'
  c.train.remat = 'none'
  # Skipped updates: a step whose loss or gradient is not finite leaves params and optimizer
  # state as they were (counted as train/skipped); this many in a row stop the run.
  c.train.max_skipped_steps = 20
  # Bidirectional diffusion: steps with step % k == 0 also train the a2v denoiser (config.a2v)
  # on the batch's audio; 0 = off (no a2v params or a2v steps). Only with
  # diffusion.training 'joint' (every k-th step) or 'frozen' (every k-th generator step).
  c.train.bidirectional_interval = 0
  # An exponential moving average of the weights (decay per update, warmed up as
  # min(ema_decay, (1 + n) / (10 + n)) over a group's n updates) that every sampling and
  # embedding of a trained state uses; 0 = off (no EMA in the state or checkpoints).
  c.train.ema_decay = 0.0
  # Fine-tuning: the workdir of another run whose newest params (its EMA, if it kept one)
  # start this run, with a fresh optimizer and this run's schedule; '' = a fresh init. Used
  # only when this workdir has no checkpoint yet (a resumed run keeps its own params).
  c.train.init_from = ''
  # 'frozen' training's generator stage: compute the frozen encoders' video features of the
  # train split once, when the stage starts, and train the denoiser on them (a step skips the
  # video encoder). Kept in host memory (core/feature_cache.py): for fine-tuning sets.
  c.train.cache_video_features = False

  # Device mesh (DESIGN §6): mesh.data x mesh.fsdp devices (-1: whatever the other leaves).
  # Batches are split over both axes; params and optimizer state are sharded along 'fsdp'
  # (the largest dimension divisible by it) when they have at least fsdp_min_size elements,
  # and replicated otherwise or when their path matches fsdp_replicate (a regex).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.fsdp_min_size = 2**16
  c.mesh.fsdp_replicate = 'temperature|norm|bias'

  # Evaluation (retrieval on the test split, DESIGN §5).
  c.eval = ml_collections.ConfigDict()
  c.eval.num_test_clips = 1_024  # Synthetic test clips (a prepared set: its whole test split).
  c.eval.batch_size = 64
  c.eval.retrieval_scale = -1  # -1: concatenate every scale; else the index of one scale.
  # 'segments': mean cosine of time-aligned segments (what MSA trains); 'clip': of clip means.
  c.eval.retrieval_pooling = 'segments'
  c.eval.top_k = (1, 5, 10)
  # Generation (DESIGN §5): audio for the first `num_generate_clips` test videos, scored by
  # onset hit-rate; the generate CLI takes the same sampler settings as its defaults.
  c.eval.num_generate_clips = 64
  c.eval.num_summary_clips = 4  # Spectrograms and audio written for these at each evaluation.
  c.eval.sampler = 'dpmpp2m'  # 'ddpm', 'ddim', 'dpmpp2m'; 'euler', 'heun' (objective 'flow').
  # 5 steps guided where the noise level is above 1 (below): 8 denoiser evaluations, a 10 s
  # clip in 8.5 s on 2 CPU cores, every metric within seed noise of 10 fully guided steps
  # (20 evaluations), 3 seeds (generation.md); --steps=10 for the best measured quality.
  c.eval.sample_steps = 5
  # Classifier-free guidance scale (1 = the conditional model alone, one UNet call per step);
  # 5 from a guidance sweep of onset hit-rate against shuffled videos (docs/config_notes.md);
  # :runlocal uses 2 (below).
  c.eval.guidance = 5.0
  # () guides every step; (lo, hi) only steps with noise level sigma = sqrt((1-ab)/ab) in
  # (lo, hi] (hi None: no bound), the rest run the conditional model alone at half the cost
  # (guidance.guided_steps). Above 1: the noisiest steps, where the onsets are placed.
  c.eval.guidance_interval = (1.0, None)
  c.eval.eta = 0.0  # DDIM noise (0 = deterministic).
  c.eval.griffin_lim_iters = 32
  # The evaluate command (KLD, FAD, Align Acc): audio is generated for the first
  # `num_metric_clips` test videos; FAD's reference is the real audio of the next as many
  # (a disjoint half), so ground-truth audio shows the metric's own floor.
  c.eval.num_metric_clips = 512
  # The memorisation check of evaluate: each generated clip's nearest neighbour among the
  # first `num_memorisation_clips` training clips (evaluator embedding); 0 turns it off.
  c.eval.num_memorisation_clips = 1024

  # Evaluator networks (DESIGN §5), trained on the dataset's train split and shared by every
  # experiment on that dataset: an audio classifier (posteriors for KLD, its embedding for
  # FAD) and an alignment classifier (Align Acc) trained on real pairs against temporally
  # shifted, segment-swapped and swapped audio (papers/002 sec. 2.2).
  c.evaluator = ml_collections.ConfigDict()
  c.evaluator.seed = 0
  c.evaluator.video_patch = 8
  c.evaluator.video_widths = (32, 64, 128)
  c.evaluator.audio_widths = (32, 64, 128)
  c.evaluator.blocks_per_stage = 1
  c.evaluator.num_groups = 8
  c.evaluator.embed_dim = 128  # The FAD embedding's width.
  c.evaluator.num_steps = 5_000
  c.evaluator.batch_size = 64
  c.evaluator.learning_rate = 1e-3
  c.evaluator.warmup_steps = 200
  # Shift negatives move the audio by this many seconds, either way ("some hundreds of ms").
  c.evaluator.min_shift_seconds = 0.2
  c.evaluator.max_shift_seconds = 1.0
  c.evaluator.num_check_clips = 512  # Test clips that measure the evaluators' own accuracy.

  c.vocoder = vocoder.base_config()
  return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the variant named by `arg` ('' or None: full size; 'runlocal': CPU-sized)."""
  arg = arg or ''
  if arg not in ('', 'runlocal'):
    raise ValueError(f"config variant {arg!r} is unknown; expected '' or 'runlocal'")
  if arg == 'runlocal':
    c.data.num_frames = RUNLOCAL['num_frames']
    c.data.fps = RUNLOCAL['fps']
    c.data.image_size = RUNLOCAL['image_size']
    c.data.num_train_clips = 200_000
    # Patch 8: at patch 4 the first-stage convs over every frame cost 1.3 s/step on 2 cores.
    # The overlapping stem and (32, 64) stages: over 3 seeds, R@1 +11 both ways, onset F1
    # +6.6, above the timing-blind ceiling on every seed (docs/config_notes.md).
    c.model.video_patch = 8
    c.model.video_stem = 'conv'
    c.model.video_widths = (32, 64)
    c.model.audio_widths = (32, 64)
    c.model.blocks_per_stage = 1
    c.model.embed_dim = 128
    # Keep the experiment's number of scales, remapped onto T = 16 frames.
    c.model.scale_pools = remap_pools(c.model.scale_pools, c.data.num_frames)
    c.model.scale_grids = tuple(c.model.scale_grids)[:len(c.model.scale_pools)]
    c.train.num_steps = 2_400  # ~14 min on 2 idle cores (docs/config_notes.md).
    c.train.batch_size = 32
    # 2.4k steps instead of the paper's ~100k: a 10x larger peak rate (full size keeps 1e-4).
    c.train.learning_rate = 1e-3
    c.train.encoder_lr_scale = 4.0  # Still climbing at 1.2k steps (docs/config_notes.md).
    c.train.warmup_steps = 100
    c.train.checkpoint_every_steps = 400
    c.train.eval_every_steps = 400
    c.eval.num_test_clips = 512
    c.eval.num_metric_clips = 256
    c.evaluator.video_widths = (16, 32, 64)
    c.evaluator.audio_widths = (16, 32, 64)
    c.evaluator.embed_dim = 64
    c.evaluator.num_steps = 1_500
    c.evaluator.batch_size = 32
    c.evaluator.num_check_clips = 256
    vocoder.apply_runlocal(c.vocoder)
    # 2x16 stem patches (50 ms x 16 mels) and attention at the coarsest level only keep a
    # UNet update at batch 32 affordable on 2 cores (docs/config_notes.md).
    c.unet.widths = (32, 48, 64)
    c.unet.attention_levels = (2,)
    c.unet.level_scales = tuple(min(l, len(c.model.scale_pools) - 2) for l in range(3))
    c.unet.blocks_per_level = 1
    c.unet.stem_patch = (2, 16)
    # v-prediction: with 32 pixels per 32-channel stem patch the UNet cannot copy its input
    # through, so an eps error near t = T is amplified into x0 = (x_t - s eps) / a, while a
    # v error reaches x0 multiplied by s <= 1 (docs/config_notes.md). Full size (1x4
    # patches of 128 channels) keeps the paper's eps.
    c.diffusion.prediction = 'v'
    # For the same reason its x0 prediction kept most of the noise below t ~ 250, and samples
    # came out with 11x the real clips' fine texture: a per-pixel path from x_t to the output
    # removes most of it (onset F1 +5.9 over 3 seeds, KLD +0.62; docs/config_notes.md).
    c.unet.pixel_skip = True
    # With the per-pixel path, guidance 5 over-steers: the label oracle makes the right source
    # in 59% of clips at 5 and 93% at 2 (3 seeds); for the video condition every metric stays
    # within seed noise, Align Acc +10 and onset F1 -2.6 (docs/generation.md).
    c.eval.guidance = 2.0
    # 16x16 frames (4x4-pixel blocks of the 64x64 input: objects stay a few pixels wide) in
    # 2x2 stem patches of 32 channels, 16 of the 32 examples; 4x4 patches (48 values into 48
    # features) could not pass pixel noise through (docs/config_notes.md).
    c.a2v.image_size = 16
    c.a2v.stem_patch = 2
    c.a2v.widths = (32, 64)
    c.a2v.attention_levels = (1,)
    c.a2v.blocks_per_level = 1
    c.a2v.batch_size = 16
    if c.diffusion.training == 'frozen':
      # The same number of UNet steps as the joint configs, after the same contrastive stage.
      c.diffusion.encoder_steps = c.train.num_steps
      c.train.num_steps *= 2
      c.train.checkpoint_every_steps = c.train.eval_every_steps = 800
  # Left at these or set to 0, a prepared data.name reads them from its set (core/preflight.py).
  c.eval.synthetic_defaults = dict(num_classes=c.data.num_classes,
                                   num_test_clips=c.eval.num_test_clips)
  return c


def remap_pools(pools, num_frames):
  """Keeps the fine-to-coarse structure of `pools` with the clip level at `num_frames`."""
  fine = [p for p in pools[:-1] if num_frames % p == 0 and p < num_frames]
  return tuple(fine) + (num_frames,)
