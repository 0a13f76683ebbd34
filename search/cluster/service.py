"""A registered model as a Ray Serve application: photos in over HTTP, the photos of concurrent requests batched
through the face step and the network.

``POST /predict`` takes one photo as a raw ``image/jpeg`` or ``image/png`` body, or JSON ``{"photos": [base64,
...]}`` (``{"inputs": [...]}``, MLflow's scoring server's key, is taken too), and answers ``{"predictions":
[{"label", "class", "probability"}, ...]}``, one per photo in order. ``GET /health`` says which model serves.
Bad input is HTTP 400 with ``{"error": "<one line>"}``; the replica goes on answering. No request makes it open a
file: a string is a photo's base64, never a path.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ray import serve

from maskclf import photos, predict
from maskclf.errors import InputError

MAX_PHOTOS = 64  # photos in one request
MAX_BODY = 48 * 2**20  # bytes of one request (base64 adds a third to the photos' bytes)
MAX_BATCH = 32  # photos of concurrent requests that go through the face step and the network together
BATCH_WAIT_S = 0.01  # how long a photo waits for others to join its batch


class BadRequest(Exception):
    """What is wrong with a request, in one line."""


async def _body(request, limit: int) -> bytes:
    """The request's body, or BadRequest when it is over ``limit`` bytes: the rest is read and dropped (never
    kept), so that the client, still sending, reads the answer instead of a reset connection."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
    if size > limit:
        raise BadRequest(f"request body of {size:,} bytes, over the limit of {limit:,}")
    return b"".join(chunks)


def photos_of(content_type: str, body: bytes, max_photos: int = MAX_PHOTOS) -> list:
    """The photos a request sends: bytes for an image body, base64 strings from JSON; BadRequest otherwise."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadRequest("empty body: send a JPEG or PNG photo, or JSON {\"photos\": [base64, ...]}")
    if kind in ("image/jpeg", "image/png"):
        return [body]
    if kind != "application/json":
        raise BadRequest(f"Content-Type '{kind or 'none'}': send image/jpeg, image/png or application/json")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    items = doc.get("photos", doc.get("inputs")) if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest("JSON must be {\"photos\": [base64 of a JPEG or PNG, ...]} with at least one photo")
    if len(items) > max_photos:
        raise BadRequest(f"{len(items)} photos in one request, over the limit of {max_photos}")
    return items


@serve.deployment(max_ongoing_requests=128)
class Classifier:
    """One replica: the model loaded once, the photos of concurrent requests voted on together."""

    def __init__(self, model_uri: str, tracking_uri: str, version: str = "") -> None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.model_uri, self.version = model_uri, version
        # the registered pyfunc's own Python model: the same decoding, face step and vote as model.predict
        self.model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
        self.served = self.photos = 0

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/") or "/"
        if path == "/health" and request.method == "GET":
            return JSONResponse({"status": "ok", "model": self.model_uri, "version": self.version,
                                 "requests": self.served, "photos": self.photos})
        if path != "/predict":
            return JSONResponse({"error": f"no such endpoint {request.method} {path}: POST /predict, "
                                          "GET /health"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "POST a photo to /predict"}, status_code=405)
        start = time.perf_counter()
        try:
            items = photos_of(request.headers.get("content-type", ""), await _body(request, MAX_BODY))
            images = await asyncio.to_thread(photos.decode_all, items)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except InputError as e:
            return JSONResponse({"error": e.message()}, status_code=400)
        decoded = time.perf_counter()
        answers = await asyncio.gather(*(self.answer(image) for image in images))
        self.served, self.photos = self.served + 1, self.photos + len(images)
        return JSONResponse({"predictions": list(answers),
                             "seconds": {"decode": round(decoded - start, 4),
                                         "model": round(time.perf_counter() - decoded, 4)}})

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def answer(self, images: list) -> list[dict]:
        """The answers for photos of any requests, in one pass of the face step and the network (in a thread, so
        that requests keep arriving and joining the next batch)."""
        return await asyncio.to_thread(self._answers, images)

    def _answers(self, images: list) -> list[dict]:
        probs, task = self.model.probabilities(images)
        return predict.answers(probs, task).to_dict("records")
