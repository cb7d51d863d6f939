"""The frame pipeline in plain Python: models and their decoders, geometry, tracking, the result schema.

Nothing here knows about Ray; ``actors/`` and ``serve/`` wrap it.
"""
