"""A1111's Extras routes: `extra-single-image` and `extra-batch-images` upscale through the same upscalers as
Hires. fix, as jobs of the shared queue (upscaler models run on the GPU)."""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose owner type is a parameter.
import html
import io
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from PIL import Image

from webui.api.models import (
    ExtrasBatchImagesBody,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageBody,
    ExtrasSingleImageResponse,
)
from webui.api.second_pass import SecondPassError, decode_image, extras_settings
from webui.api.translate import encode_png
from webui.engine.extras import upscale_extras
from webui.engine.infotext import format_infotext
from webui.engine.jobs import JobCall, JobState


def _unprocessable(error: SecondPassError) -> RequestValidationError:
    loc = ("body", error.field)
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(error), "input": error.value}])


def _png(image: Image.Image, info: dict[str, Any]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    chunk = PngInfo()
    chunk.add_text("postprocessing", format_infotext("", "", info).strip())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunk)
    return buffer.getvalue()


def _upscale_all(images: list[Image.Image], settings: Any, upscalers: Any) -> JobCall:
    def run(engine: Any, _progress: Callable[[Any], None], _cancel: Any) -> tuple[list[bytes], str]:
        outputs, info = [], {}
        with engine.gpu_lock:
            for image in images:
                result, info = upscale_extras(image, settings, upscalers, engine.upscaler_models.run)
                outputs.append(_png(result, info))
        text = ", ".join(f"{key}: {value}" for key, value in info.items())
        return outputs, f"<p>{html.escape(text)}</p>"

    return run


def add_extras_routes(router: APIRouter, library: Any, run_job: Callable[..., Any], owner_type: Any) -> None:
    """Add `/extra-single-image` and `/extra-batch-images` to the /sdapi/v1 `router`. `run_job(call, owner,
    request)` queues the call and awaits it: the finished Job, or None when the client went away first."""

    async def run(call: JobCall, owner: str, request: Request) -> Any:
        job = await run_job(call, owner, request)
        if job is None:
            return None
        if job.state is JobState.FAILED:
            raise HTTPException(status_code=500, detail=job.error or "the upscale failed")
        return job.result

    def prepare(body: Any, encoded: list[str], field: str) -> tuple[list[Image.Image], Any, Any]:
        try:
            settings, upscalers = extras_settings(body, library)
            return [decode_image(item, field) for item in encoded], settings, upscalers
        except SecondPassError as error:
            raise _unprocessable(error) from None

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageBody, owner: owner_type, request: Request) -> Any:
        images, settings, upscalers = prepare(body, [body.image], "image")
        finished = await run(_upscale_all(images, settings, upscalers), owner, request)
        if finished is None:
            return Response(status_code=499)  # nobody is listening; the job was cancelled
        outputs, info = finished
        return {"html_info": info, "image": encode_png(outputs[0])}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesBody, owner: owner_type, request: Request) -> Any:
        images, settings, upscalers = prepare(body, [item.data for item in body.imageList], "imageList")
        finished = await run(_upscale_all(images, settings, upscalers), owner, request)
        if finished is None:
            return Response(status_code=499)  # nobody is listening; the job was cancelled
        outputs, info = finished
        return {"html_info": info, "images": [encode_png(data) for data in outputs]}
