"""Inference engines behind one session interface (``EngineSession``).

Model classes (SCRFD, ArcFace) only ever see an ``EngineSession``; which engine
runs it is chosen once, in ``factory.create_engine_session``.
"""
