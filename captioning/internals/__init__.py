"""The kit's machinery. Students never need to read or change anything here: atomic writes, locks, CPU threads,
plug-ins, torchrun, the optimiser, argument checks, the error type and the encoder's speed-ups.

Rule (``tests/test_layout.py``): nothing here imports the course layer (``captioning.models``, ``solver``,
``datasets``…) or the ``data`` and ``evaluation`` subpackages."""
