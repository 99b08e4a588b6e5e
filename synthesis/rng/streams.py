"""The registry of random streams: every stream id used anywhere, in one table.

A stream names the purpose of a draw, so that two uses of one row seed never share numbers
(:func:`synthesis.rng.uniform` and friends hash ``(row seed, stream, element)``). Ids are
part of the bytes of a build: never renumber one. A new purpose takes a new, unused id and
is added here; :data:`STREAMS` is checked for duplicates on import.
"""

from __future__ import annotations

# Camera noise (synthesis.corruptions.noise)
SHOT = 100  #: Poisson shot noise
READ = 101  #: Gaussian read noise
GAUSSIAN = 102  #: the first-release signal-independent Gaussian model
# Corruptions of real images (synthesis.corruptions.real)
REAL_NOISE = 110  #: the extra noise of the real_snr splits
REAL_BLUR_NOISE = 111  #: the noise that real_sib/real_svb restore after the blur
# Ground truth (synthesis.groundtruth.masks)
ER_WARP = 200  #: the displacement field that bends ER tubules
# Physics renderer (synthesis.render.physics)
RENDER_PARAMS = 250  #: per-row parameter draws
TEXTURE_FINE = 251
TEXTURE_COARSE = 252
BACKGROUND = 253
INSTANCE = 254  #: per-nucleus brightness
# GAN renderer and its denoiser (synthesis.render.gan; the denoiser's training pairs:
# synthesis.render.clean_model, synthesis.render.noise_model)
GAN_INPUT = 280  #: the generator's noise channels
CLEAN_INTENSITY = 281
CLEAN_TEXTURE = 282
NOISE_WHITE = 283
NOISE_CORR = 284
NOISE_CHOICE = 285
# Attacks (synthesis.corruptions.attacks)
ATTACK_START = 300  #: PGD's uniform random start
ATTACK_SQUARE = 301  #: the Square attack's stripes, squares and signs (random search)
# GAN training (synthesis.models.gan_training)
GAN_TRAIN_NOISE = 380
# The build's train and validation rows (builder.assembly.images)
TRAIN_SNR = 400  #: a row's SNR, log-uniform in its config's range (synthesis.levels)
# Renderer ablation (builder.experiments.ablation)
ABLATION_SNR = 390  #: a row's train SNR drawn from the real tiles' native SNR

#: name -> id of every stream.
STREAMS: dict[str, int] = {
    name: value for name, value in globals().items() if name.isupper() and isinstance(value, int)
}
if len(set(STREAMS.values())) != len(STREAMS):  # pragma: no cover - guards edits of this table
    raise RuntimeError(f"stream ids must be unique: {STREAMS}")
