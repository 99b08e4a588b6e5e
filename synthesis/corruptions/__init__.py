"""The controlled degradations: camera noise at an exact SNR (:mod:`.noise`, with its
compiled sums in :mod:`.noise_sums`), space-invariant and space-variant blur (:mod:`.psf`)
and adversarial attacks (:mod:`.attacks`).

Definitions: ``docs/definitions.md`` (sections SNR, Blur, Attacks).
"""
