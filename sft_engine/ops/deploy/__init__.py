"""``sft-engine deploy {k8s,compose}``: what a cluster or a compose host needs to serve a repository.

``spec`` gathers and checks the repository's facts and the options; ``k8s`` and
``compose`` render from them; ``writer`` scans, renders and writes the files.
"""
