"""``sft-engine tune``: the serving configuration that carries the most load within an SLO.

``runner`` runs a tune over ``search``'s candidates, each measured by ``bench`` and
printed by ``table``; ``writer`` publishes the winner. ``config`` holds what a tune is
asked and what it found, so every other module names them without importing ``runner``.
"""
