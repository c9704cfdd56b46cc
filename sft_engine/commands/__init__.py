"""One module per ``sft-engine`` command; each exposes ``register(subparsers)``."""
