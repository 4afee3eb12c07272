"""The A1111-compatible REST routes (/sdapi/v1/...), running every GPU job through the shared job queue."""

# No `from __future__ import annotations` here: FastAPI reads the route signatures, whose `Owner` is local.
import asyncio
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from webui.api import listing
from webui.api.bodies import CheckedJSONRoute
from webui.api.extras_routes import add_extras_routes
from webui.api.info_routes import add_info_routes
from webui.api.models import (
    Img2ImgBody,
    LoraItem,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    Txt2ImgBody,
    Txt2ImgResponse,
)
from webui.api.options import NO_VAE, ApiOptions, check_option
from webui.api.status import progress_body
from webui.api.translate import FieldError, encode_png, plan_img2img, plan_txt2img, png_info, txt2img_info
from webui.engine.jobs import Job, JobCall, JobQueue, JobState, Placement, QueueFullError
from webui.engine.pipelines import ModelChoice
from webui.engine.request import GenerationRequest, GenerationResult
from webui.engine.styles import StyleLibrary
from webui.models.kinds import Kind
from webui.models.library import ModelEntry, ModelNotFoundError

CurrentUser = Callable[..., Any]  # a FastAPI dependency returning the user name (may be async, may raise 401)


def client_host(request: Request) -> str:
    """The job owner when auth is off: the client's address."""
    return request.client.host if request.client else "local"


def _unprocessable(error: FieldError) -> RequestValidationError:
    """FastAPI's own 422 shape, so clients parse ours like a type error: detail[].loc ends with the field."""
    return RequestValidationError([{"type": "value_error", "loc": error.loc, "msg": str(error), "input": error.value}])


def _submit(
    queue: JobQueue,
    fn: JobCall,
    owner: str,
    kind: str,
    model: ModelChoice | None = None,
    placement: Placement = Placement.ANY,
) -> Job:
    try:
        return queue.submit_call(fn, owner, kind, model=model, placement=placement)
    except QueueFullError as error:
        raise HTTPException(status_code=503, detail=str(error), headers={"Retry-After": "5"}) from None


async def _finished(job: Job, request: Request | None = None) -> bool:
    """Wait for the job without holding a thread. False when the client (of `request`) went away first: the job is
    then cancelled (taken out of the queue, or stopped at its next stage), since nobody will receive its result."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def resolve(_job: Job) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    job.add_done_callback(resolve)
    gone = asyncio.ensure_future(_disconnected(request)) if request is not None else loop.create_future()
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel(job.owner)
        raise
    finally:
        gone.cancel()
    if done.done():
        return True
    job.cancel(job.owner)
    return False


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read already, so receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# The engine's request fields under the names A1111's bodies give them.
_BODY_NAMES = {
    "sampler": ("body", "sampler_name"),
    "schedule": ("body", "scheduler"),
    "batch_count": ("body", "n_iter"),
}


def _failure(job: Job, field_loc: dict[str, tuple[str, ...]] | None = None) -> Response:
    """A job that raised: a request the engine refused (RequestError, with the field) is a 422 naming the field;
    anything else (out of memory, a broken model file, ...) is A1111's 500 error body."""
    if job.error_field is not None:
        loc = {**_BODY_NAMES, **(field_loc or {})}.get(job.error_field, ("body", job.error_field))
        message = job.error or ""
        if message.startswith(f"{job.error_field}:"):  # the engine's field name, as the API calls it
            message = f"{loc[-1]}{message[len(job.error_field) :]}"
        raise _unprocessable(FieldError(loc, message, None))
    content = {"error": job.error_type or "JobFailed", "detail": job.error, "body": "", "errors": job.error}
    return JSONResponse(status_code=500, content=content)


def _generate(request: GenerationRequest, preview_every: int, keep_files: bool, samples_format: str) -> JobCall:
    """Generate and read the image files back (PNG, JPEG or WebP, the infotext inside each). Unkept images are
    written to a temporary folder, deleted by the job itself (whatever happens to the HTTP request), so outputs/
    only ever holds images someone asked to keep."""

    def run(engine: Any, progress: Callable[[Any], None], cancel: Any) -> tuple[GenerationResult, list[bytes]]:
        if keep_files:
            result = engine.generate(request, progress, cancel, preview_every, samples_format=samples_format)
            return result, [image.path.read_bytes() for image in result.images]
        with tempfile.TemporaryDirectory(prefix="webui-api-") as scratch:
            result = engine.generate(
                request, progress, cancel, preview_every, outputs_dir=Path(scratch), samples_format=samples_format
            )
            return result, [image.path.read_bytes() for image in result.images]

    return run


def _load(choice: ModelChoice) -> JobCall:
    def run(engine: Any, _progress: Callable[[Any], None], _cancel: Any) -> str:
        with engine.gpu_lock:
            return engine.manager.load(choice).choice.name

    return run


def build_api_router(
    queue: JobQueue,
    library: Any,
    options: ApiOptions | None = None,
    current_user: CurrentUser = client_host,
    styles: StyleLibrary | None = None,
    cmd_flags: Mapping[str, Any] | None = None,
) -> APIRouter:
    """Routes under /sdapi/v1 over `queue` (its engine) and `library` (a ModelLibrary). `options` holds the A1111
    options (/options; the default model and clip skip); `current_user` is a FastAPI dependency naming who calls,
    used for job ownership (default: the client's address). Every route depends on it, so it can also refuse.
    `styles` are the prompt styles (`styles`, /prompt-styles); `cmd_flags` what /cmd-flags shows."""
    options = options or ApiOptions()
    owner_of = Depends(current_user)
    Owner = Annotated[str, owner_of]
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"], dependencies=[owner_of], route_class=CheckedJSONRoute)

    def find(name: str, kind: Kind, field: str) -> ModelEntry:
        try:
            return library.find(name, kind)
        except ModelNotFoundError as error:
            raise HTTPException(status_code=404, detail=f"{field}: {error}") from None

    def default_checkpoint() -> ModelEntry | None:
        """The option's checkpoint; unset, the loaded model's or the first usable one, then kept as the option
        (so a request's override_settings never changes what later requests get)."""
        name = options["sd_model_checkpoint"]
        if name:
            return find(name, Kind.CHECKPOINT, "sd_model_checkpoint")
        loaded = queue.engine.manager.current
        entry = None
        if loaded is not None and loaded.choice.checkpoint is not None:
            entry = next((e for e in library.entries(Kind.CHECKPOINT) if e.path == loaded.choice.checkpoint), None)
        entry = entry or next((e for e in library.entries(Kind.CHECKPOINT) if e.usable), None)
        if entry is not None:
            options.update({"sd_model_checkpoint": listing.checkpoint_title(entry)})
        return entry

    def plan(body: Txt2ImgBody):  # noqa: ANN202 (Txt2ImgPlan)
        if not (body.override_settings or {}).get("sd_model_checkpoint"):
            default_checkpoint()
        try:
            return plan_txt2img(body, library, options.snapshot(), styles)
        except FieldError as error:
            raise _unprocessable(error) from None
        except ModelNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None

    @router.post("/txt2img", response_model=Txt2ImgResponse)
    async def txt2img(body: Txt2ImgBody, owner: Owner, request: Request) -> Any:
        txt2img_plan = await run_in_threadpool(plan, body)
        keep = bool(body.save_images) and not body.do_not_save_samples
        call = _generate(txt2img_plan.request, options.preview_every, keep, txt2img_plan.samples_format)
        job = _submit(queue, call, owner, "txt2img", model=txt2img_plan.request.model)
        if not await _finished(job, request):
            return Response(status_code=499)  # nobody is listening; the job was cancelled
        if job.state is JobState.FAILED:
            where = ("override_settings",) if "sd_model_checkpoint" in (body.override_settings or {}) else ()
            return _failure(job, {"model": ("body", *where, "sd_model_checkpoint")})
        if txt2img_plan.keep_settings:  # override_settings_restore_afterwards: false keeps them, as in A1111
            options.update(txt2img_plan.keep_settings)
        result, pngs = job.result or (GenerationResult((), info={"interrupted": True}), [])
        info = txt2img_info(txt2img_plan, result, job.started_at or job.submitted_at)
        images = [encode_png(png) for png in pngs] if body.send_images is not False else []
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    def plan_i2i(body: Img2ImgBody):  # noqa: ANN202 (Txt2ImgPlan)
        if not (body.override_settings or {}).get("sd_model_checkpoint"):
            default_checkpoint()
        try:
            return plan_img2img(body, library, options.snapshot(), styles)
        except FieldError as error:
            raise _unprocessable(error) from None
        except ModelNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None

    @router.post("/img2img", response_model=Txt2ImgResponse)
    async def img2img(body: Img2ImgBody, owner: Owner, request: Request) -> Any:
        img2img_plan = await run_in_threadpool(plan_i2i, body)
        keep = bool(body.save_images) and not body.do_not_save_samples
        call = _generate(img2img_plan.request, options.preview_every, keep, img2img_plan.samples_format)
        job = _submit(queue, call, owner, "img2img", model=img2img_plan.request.model)
        if not await _finished(job, request):
            return Response(status_code=499)  # nobody is listening; the job was cancelled
        if job.state is JobState.FAILED:
            where = ("override_settings",) if "sd_model_checkpoint" in (body.override_settings or {}) else ()
            return _failure(job, {"model": ("body", *where, "sd_model_checkpoint")})
        if img2img_plan.keep_settings:
            options.update(img2img_plan.keep_settings)
        result, pngs = job.result or (GenerationResult((), info={"interrupted": True}), [])
        info = txt2img_info(img2img_plan, result, job.started_at or job.submitted_at)
        images = [encode_png(png) for png in pngs] if body.send_images is not False else []
        parameters = body.model_dump()
        if not body.include_init_images:  # as A1111: the inputs are not echoed back unless asked
            parameters["init_images"] = None
            parameters["mask"] = None
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}

    @router.get("/progress", response_model=ProgressResponse)
    def progress(owner: Owner, skip_current_image: bool = False) -> dict[str, Any]:
        return progress_body(queue.progress_of(owner), skip_current_image)

    @router.post("/interrupt")
    def interrupt(owner: Owner) -> dict[str, Any]:
        queue.interrupt(owner)
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        try:
            entry = default_checkpoint()
        except HTTPException:  # the option names a file that is gone: show the option as it was set
            entry = None
        values = options.snapshot()
        if entry is not None:
            values["sd_model_checkpoint"] = listing.checkpoint_title(entry)
            cached = entry.hash and library.hash_cache.get(entry.path, entry.size, entry.mtime_ns)
            values["sd_checkpoint_hash"] = cached.sha256 if cached else None
        values["outdir_txt2img_samples"] = str(queue.engine.outputs_dir / "txt2img")
        return values

    @router.post("/options")
    async def set_options(values: dict[str, Any], owner: Owner, request: Request) -> Any:
        checked = {}
        for key, value in values.items():
            try:
                checked[key] = check_option(key, value)
            except ValueError as error:
                raise _unprocessable(FieldError(("body", key), str(error), value)) from None
        vae = checked.get("sd_vae", options["sd_vae"])
        vae_path = None if vae in NO_VAE else (await run_in_threadpool(find, vae, Kind.VAE, "sd_vae")).path
        if "sd_model_checkpoint" in checked:
            entry = await run_in_threadpool(
                find, checked["sd_model_checkpoint"], Kind.CHECKPOINT, "sd_model_checkpoint"
            )
            choice = ModelChoice(entry.path, vae=vae_path)
            job = _submit(queue, _load(choice), owner, "load-model", model=choice)
            if not await _finished(job, request):
                return Response(status_code=499)
            if job.state is JobState.FAILED:
                return _failure(job, {"model": ("body", "sd_model_checkpoint")})
            checked["sd_model_checkpoint"] = listing.checkpoint_title(entry)
        options.update(checked)
        return None

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
        return listing.sd_models(library)

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> list[dict[str, Any]]:
        return listing.sd_vaes(library)

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[dict[str, Any]]:
        return listing.loras(library)

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        return listing.samplers()

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[dict[str, Any]]:
        return listing.schedulers()

    @router.post("/png-info", response_model=PngInfoResponse)
    def pnginfo(body: PngInfoBody) -> dict[str, Any]:
        try:
            return png_info(body.image)
        except FieldError as error:
            raise _unprocessable(error) from None

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        library.refresh()

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        library.refresh()

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        library.refresh()

    async def run_job(call: JobCall, owner: str, kind: str, placement: Placement = Placement.ANY) -> Any:
        job = _submit(queue, call, owner, kind, placement=placement)
        await _finished(job)
        return _failure(job) if job.state is JobState.FAILED else {}

    def option_checkpoint() -> Path | None:
        entry = default_checkpoint()
        return entry.path if entry is not None else None

    add_info_routes(router, queue, library, styles, cmd_flags or {}, run_job, option_checkpoint, Owner)

    async def run_extras(call: JobCall, owner: str, request: Request) -> Job | None:
        """The extras job, finished; None when the client left first (the job is then cancelled)."""
        job = _submit(queue, call, owner, "extras")
        return job if await _finished(job, request) else None

    add_extras_routes(router, library, run_extras, Owner)
    return router
