"""Runnable example agents; ``aetheris demo`` runs them on the embedded stack.

Start a worker for them with::

    aetheris worker --agents examples.refund --agents examples.research --llm-provider examples.research:llm
"""
