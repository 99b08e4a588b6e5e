"""Models and their training: the reference U-Net (:mod:`.unet`, :mod:`.training`),
pix2pix (:mod:`.pix2pix`, :mod:`.gan_training`), the leaderboard's zoo (:mod:`.zoo`) and the
safetensors weight files (:mod:`.weights`). Fitting the GAN synthesizer on a source's real
pairs is an experiment: :mod:`builder.experiments.synthesizer`.
"""
