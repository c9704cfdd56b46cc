"""What the GPU targets share (``devices``, ``probes``, ``compatibility``, the half-precision module ``half``) and the
``torchscript-gpu`` target (``torchscript``)."""
