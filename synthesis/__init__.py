"""Image synthesis for FluoroBench-C: ground truth, rendering, corruptions, models.

Batched, device-agnostic torch functions on ``(B, 1, H, W)`` tensors, by job:

- :mod:`synthesis.groundtruth`: masks per structure and sources per adapter;
- :mod:`synthesis.render`: mask -> noise-free image (physics, pix2pix GAN, denoiser);
- :mod:`synthesis.corruptions`: camera noise at an exact SNR, PSFs (SIB, SVB), attacks;
- :mod:`synthesis.models`: U-Net, pix2pix and their training loops, weight files;
- :mod:`synthesis.rng`: counter-based random streams and the registry of stream ids;
- shared definitions: :mod:`synthesis.levels` (the tables), :mod:`synthesis.normalize`
  (model input), :mod:`synthesis.metrics`, :mod:`synthesis.realism` (realism measures),
  :mod:`synthesis.checks`, :mod:`synthesis.runtime.device`,
  :mod:`synthesis.runtime.errors`, :mod:`synthesis.runtime.files`, :mod:`synthesis.runtime.progress`.

Randomness comes only from explicit per-row seeds, so any output can be replayed from the
parameters stored with its row. This package imports neither ``builder`` nor
``fluorobench_c`` (an import-linter contract). Science: ``docs/definitions.md``; layers:
``docs/architecture.md``.
"""
