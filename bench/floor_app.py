"""The serving benchmark's floor: /predict with the service's own request and response models,
answering a constant score. What the HTTP stack, JSON and the load generator cost on this
machine with no feature read and no model: `python -m uvicorn bench.floor_app:app`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from serving.schemas import Prediction, PredictRequest, PredictResponse

app = FastAPI(title="serving benchmark floor")


@app.post("/predict", response_model=PredictResponse)
async def predict(request: PredictRequest) -> Response:
    response = PredictResponse(
        predictions=[
            Prediction(
                request_id=i.request_id or "",
                customer_id=i.customer_id,
                score=0.0,
                model_version="floor",
                route="champion",
            )
            for i in request.instances
        ]
    )
    # Serialised as the service does (serving.app): pydantic-core straight to bytes.
    return Response(response.model_dump_json(), media_type="application/json")
