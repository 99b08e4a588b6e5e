"""Mask -> noise-free image: the physics renderer (:mod:`.physics`), the pix2pix generator
(:mod:`.gan`) and its denoiser (:mod:`.denoise`). Noise is added afterwards, exactly, by
:mod:`synthesis.corruptions.noise`.
"""
