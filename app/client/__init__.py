"""A Python client for the facerec HTTP API (``pip install 'facerec[client]'``).

    from app.client import FaceRecClient

    with FaceRecClient("http://127.0.0.1:8000", api_key="frk_...") as client:
        client.enroll("Ada", ["ada1.jpg", "ada2.jpg"])
        for face in client.identify("group.jpg").faces:
            print(face.bbox, face.match.subject if face.match else "unknown")

``AsyncFaceRecClient`` has the same methods as coroutines. Responses are the service's
own pydantic models (``app.schemas``); an error answer raises ``ApiError`` carrying the
service's stable ``code``. ``api_key`` defaults to ``$FACEREC_KEY``.
"""

from app.client.aio import AsyncFaceRecClient
from app.client.errors import ApiError
from app.client.requests import ImageInput
from app.client.stream import AsyncLiveStream, LiveStream, StreamAnswer, StreamFace
from app.client.sync import FaceRecClient

__all__ = [
    "ApiError",
    "AsyncFaceRecClient",
    "AsyncLiveStream",
    "FaceRecClient",
    "ImageInput",
    "LiveStream",
    "StreamAnswer",
    "StreamFace",
]
