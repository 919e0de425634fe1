"""Live recognition on a stream of frames: tracking, temporal identity votes, re-id policy.

One-way flow per frame: bytes -> decoded frame -> detections -> tracks (``tracker``)
-> the few tracks due for recognition (``reid``) -> embeddings -> gallery search
-> per-track votes (``voting``) -> stable names. ``session`` orchestrates a frame
and runs a recognition job; ``mailbox`` is the latest-frame-wins hand-over between
the socket and the worker; ``background`` runs the recognition off the answer path
(one job in flight per stream); ``hub`` is the per-process part (shared
collaborators and the stream cap).
"""
