"""Engine exporters, one module per target, and the registry that lists them (``registry``).

Each target module defines ``TARGET``: the candidates it plans (engine × precision) and
how it exports one into files, a runner and the engine half of its config
(``base``). Judging them (parity, precision gates, timing) is the build's job, once
for every target (``sft_engine.build``).
"""
