"""Ground truth: procedural masks per structure (:mod:`.masks`) and sources per adapter
(:mod:`.sources`: procedural, images/+masks/ folders, Luo et al. lists, BBBC038).

Definitions: ``docs/definitions.md#data-contract``.
"""
