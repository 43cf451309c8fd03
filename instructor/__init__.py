"""Instructor tooling beside the student package ``captioning``: the student edition (``release``), the
autograder (``grading``), the notebook runner (``notebook_runs``), the demo and its report, and the fast training
and decoding path (``fastpath``, found by the student package through the ``captioning.internals.plugins`` entry point).
The student edition leaves this package out as a whole; nothing in ``captioning`` imports it by name.

Command line: ``python -m instructor COMMAND`` (``demo``, ``notebooks``, ``release``, ``grade``, ``report``).
"""
