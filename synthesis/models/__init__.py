"""Models and their training: the reference U-Net (:mod:`.unet`, :mod:`.training`),
pix2pix (:mod:`.pix2pix`, :mod:`.gan_training`), fitting the GAN synthesizer on real pairs
(:mod:`.synthesizer`) and the safetensors weight files (:mod:`.weights`).
"""
