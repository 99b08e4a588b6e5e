"""Mask -> noise-free image: the physics renderer (:mod:`.physics`, fitted to real tiles by
:mod:`.fit`), the naive baseline (:mod:`.naive`), the pix2pix generator (:mod:`.gan`) and its
denoiser (:mod:`.denoise`, trained on pairs from :mod:`.clean_model` and :mod:`.noise_model`,
which measure through :mod:`.morphology`). Noise is added afterwards, exactly, by
:mod:`synthesis.corruptions.noise`.
"""
