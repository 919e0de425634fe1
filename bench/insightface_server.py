"""The plain service a user would write instead of facerec: FastAPI around insightface.

insightface's ``FaceAnalysis`` on a model package holding the same two files our
server loads, the classic ``det_size=(640, 640)``, default onnxruntime session
options, a sync endpoint (FastAPI runs it in its thread pool, so concurrent
requests run concurrently). The response carries what ``POST /embed`` returns.
Benchmark use only (bench/throughput.py starts it); insightface stays out of app/.

    python -m bench.insightface_server --package DIR --port 8101
"""

from __future__ import annotations

import argparse
from typing import Any

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile


def build_app(package: str, det_size: int, det_thresh: float, providers: list[str]) -> FastAPI:
    from insightface.app import FaceAnalysis

    analysis = FaceAnalysis(
        name=package, allowed_modules=["detection", "recognition"], providers=providers
    )
    analysis.prepare(ctx_id=-1, det_size=(det_size, det_size), det_thresh=det_thresh)
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/embed")
    def embed(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        pixels = cv2.imdecode(np.frombuffer(image.file.read(), np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            raise HTTPException(400, "undecodable image")
        faces = analysis.get(pixels)
        return {
            "faces": [
                {
                    "bbox": face.bbox.tolist(),
                    "det_score": float(face.det_score),
                    "landmarks": face.kps.tolist(),
                    "embedding": face.normed_embedding.tolist(),
                }
                for face in faces
            ]
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", required=True, help="insightface model package folder")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--det-thresh", type=float, default=0.5)
    parser.add_argument(
        "--providers", default="CPUExecutionProvider", help="onnxruntime providers, comma separated"
    )
    args = parser.parse_args()
    app = build_app(args.package, args.det_size, args.det_thresh, args.providers.split(","))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
