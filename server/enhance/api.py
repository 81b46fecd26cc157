"""The enhancement API: a job for an indexed photo or an uploaded one, its state and progress, its result
image, and cancelling it. Jobs run one at a time on a low-priority thread (server/enhance/jobs.py)."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import msgspec.inspect
from litestar import Controller, HttpMethod, Litestar, Response, delete, get, post, route
from litestar.datastructures import State, UploadFile
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.params import JSONBody, MultipartBody, PathParameter
from litestar.response import File
from litestar.status_codes import HTTP_202_ACCEPTED

from clipalbum.server.api import BAD_QUERY, MAX_REQUEST_BYTES, NOT_FOUND, PhotoId, error_spec
from clipalbum.server.enhance.color import CONTRAST_LOG_MAX
from clipalbum.server.enhance.conditioning import Conditioner
from clipalbum.server.enhance.jobs import EnhanceJobs, Job, JobRequest, jobs_folder
from clipalbum.server.enhance.manifest import enhancer_dir, read_enhancer_manifest
from clipalbum.server.enhance.runtime import Applied, EnhanceOptions, load_enhancer
from clipalbum.server.errors import BundleError
from clipalbum.server.library import MAX_QUERY_CHARS, MAX_UPLOAD_BYTES, check_upload_size
from clipalbum.server.pathnames import display

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clipalbum.server.library import Library

MAX_API_STEPS = 8  # more steps are a GPU's quality mode; on a CPU they only make the queue longer
PREVIEW_SIDES = (64, 4096)


class EnhanceBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to correct; a field left out (or null) is the model's automatic choice (noise: by the noise the photo
    shows, none on a clean one)."""

    denoise: Annotated[float, msgspec.Meta(ge=0, le=1, description="0 keeps the noise, 1 removes all the "
                                                                   "model finds; null: by the noise the photo "
                                                                   "shows, none on a clean one")] | None = None
    exposure: Annotated[float, msgspec.Meta(ge=-5, le=5, description="EV added in linear light; null: up to "
                                                                    "where the photo's highlights reach white "
                                                                    "(read once denoised)")] | None = None
    contrast: Annotated[float, msgspec.Meta(ge=0, le=1, description="0 as is, 1 doubles contrast; null: the "
                                                                   "photo's lost contrast, from its black point "
                                                                   "(read once denoised)")] | None = None
    temperature: Annotated[float, msgspec.Meta(
        ge=1500, le=15000, description="the light the photo was taken in, in kelvin (3000: tungsten), "
                                       "corrected to daylight")] | None = None
    prompt: Annotated[str, msgspec.Meta(
        min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S",
        description='what the result should look like, e.g. "warm evening light" or "brighter"')] | None = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=MAX_API_STEPS, description="diffusion steps")] = 1
    preview: Annotated[int, msgspec.Meta(
        ge=PREVIEW_SIDES[0], le=PREVIEW_SIDES[1],
        description="a quick result for the screen: long side in pixels (JPEG); null: the full-size photo")
                       ] | None = None
    format: Literal["same", "jpeg", "png"] = "same"

    def job_request(self) -> JobRequest:
        return JobRequest(options=EnhanceOptions(denoise=self.denoise, exposure=self.exposure, contrast=self.contrast,
                                                 temperature=self.temperature, steps=self.steps),
                          prompt=self.prompt, preview=self.preview, format=self.format)


class AppliedCorrection(msgspec.Struct):
    """The global correction a finished job used: the model's choices and the caller's fixed values."""

    denoise: float  # 0..1: the share of the UNet's noise removal applied (on auto, by the photo's noise)
    exposure: float  # EV
    contrast: float  # on the request's 0..1 scale
    red_gain: float  # in linear light
    blue_gain: float


class JobInfo(msgspec.Struct):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float  # 0..1, by tiles done
    queue_position: int | None  # jobs before this one while it is queued
    name: str  # the photo's file name
    photo_id: int | None  # None for an uploaded photo
    preview: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None  # why it failed
    result_url: str | None  # once done
    width: int | None  # of the result
    height: int | None
    applied: AppliedCorrection | None


class EnhanceUpload(EnhanceBody, forbid_unknown_fields=True, kw_only=True):
    """An uploaded photo and the options of EnhanceBody, as multipart form fields."""

    file: UploadFile


JobId = Annotated[str, PathParameter(description="a job id from POST .../enhance", pattern=r"^[0-9a-f]{32}$",
                                     min_length=32, max_length=32)]

NO_ENHANCER = {503: error_spec("no enhancer is installed, or the queue is full (try again after Retry-After "
                           "seconds); `detail` says which")}
UNREADABLE_PHOTO = {422: error_spec("the photo is not readable (not an image, or too many pixels)")}
NO_PROMPTS = {409: error_spec("a prompt was given, but this server's search model is not the one the enhancer "
                         "was trained with: it cannot follow prompts")}
NOT_READY = {409: error_spec("the job is not done (queued, running, failed or cancelled); `detail` says which")}
UNKNOWN_JOB = {404: error_spec("no such job (or it finished over an hour ago)")}


def document_strict_bodies(app: Litestar) -> None:
    """Says in the OpenAPI schema what Litestar 2.25's schema of a msgspec Struct leaves out: the request
    bodies refuse unknown fields (a misspelt option is an error, not silently "auto"), and a lower bound of
    0 (which it drops as if it were none)."""
    schemas = app.openapi_schema.components.schemas or {}
    for struct in (EnhanceBody, EnhanceUpload):
        schema = schemas.get(struct.__name__)
        if schema is None:
            continue
        schema.additional_properties = False
        for name, lowest in _lower_bounds(struct).items():
            field = (schema.properties or {}).get(name)
            if isinstance(field, Schema) and field.minimum is None:
                field.minimum = lowest


def _lower_bounds(struct: type[msgspec.Struct]) -> dict[str, float]:
    bounds: dict[str, float] = {}
    for field in msgspec.inspect.type_info(struct).fields:  # type: ignore[union-attr]
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        for kind in kinds:
            inner = kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
            if getattr(inner, "ge", None) is not None:
                bounds[field.name] = inner.ge
    return bounds


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def job_info(job: Job, queue_position: int | None, forgotten: bool = False) -> JobInfo:
    """`forgotten`: the job was just deleted, so it has no result to fetch any more."""
    return JobInfo(
        id=job.id, state=job.state, progress=round(job.progress, 4), queue_position=queue_position, name=job.name,
        photo_id=job.photo_id, preview=job.request.preview, created_at=_time(job.created) or "",
        started_at=_time(job.started), finished_at=_time(job.finished), error=job.error,
        result_url=f"/api/jobs/{job.id}/result" if job.state == "done" and not forgotten else None, width=job.width, height=job.height,
        applied=None if job.applied is None else applied_correction(job.applied))


def applied_correction(applied: Applied) -> AppliedCorrection:
    params = applied.params
    return AppliedCorrection(
        denoise=round(applied.denoise, 3), exposure=round(params.exposure_ev, 3),
        contrast=round(params.contrast_log / CONTRAST_LOG_MAX, 3),
        red_gain=round(math.exp(params.log_gain_red), 4), blue_gain=round(math.exp(params.log_gain_blue), 4))


def enhance_jobs(library: "Library", directory: Path | None = None, device: str = "auto") -> EnhanceJobs | None:
    """The server's job queue around the enhancer in `directory` (default: $CLIPALBUM_ENHANCER or the packaged
    one); None when there is none, and the enhance routes answer 503."""
    try:
        chosen = Path(directory) if directory is not None else enhancer_dir(None)
        manifest = read_enhancer_manifest(chosen, verify=False)
    except BundleError:
        return None
    try:
        folder = jobs_folder(library.paths.root / "enhance-jobs")
    except OSError as exc:  # a read-only or full data directory: search still works, enhancing does not
        log.warning("enhancing is off: no room for its results in the data directory (%s)", exc)
        return None
    conditioner = Conditioner(library.encoders, manifest.conditioning_model_id)
    return EnhanceJobs(folder, lambda: load_enhancer(chosen, device=device), conditioner)


def _jobs(state: State) -> EnhanceJobs:
    jobs: EnhanceJobs | None = state.enhance_jobs
    if jobs is None:
        raise BundleError("this server has no enhancer: install clipalbum with its packaged model, or set "
                          "CLIPALBUM_ENHANCER to a folder made by `clipalbum enhance export`")
    return jobs


def _accepted(jobs: EnhanceJobs, job: Job) -> Response[JobInfo]:
    return Response(job_info(job, jobs.queue_position(job.id)), status_code=HTTP_202_ACCEPTED,
                    headers={"Location": f"/api/jobs/{job.id}"})


class EnhanceController(Controller):
    path = "/api"
    tags = ["enhance"]

    @post("/images/{photo_id:int}/enhance", status_code=HTTP_202_ACCEPTED, sync_to_thread=True,
          summary="Enhance an indexed photo: starts a job (the original is only read)",
          responses={**BAD_QUERY, **NOT_FOUND, **NO_PROMPTS, **UNREADABLE_PHOTO, **NO_ENHANCER})
    def enhance_photo(self, state: State, photo_id: PhotoId, data: JSONBody[EnhanceBody]) -> Response[JobInfo]:
        jobs = _jobs(state)
        library: Library = state.library
        photo = library.photo(photo_id)
        source = library.servable(photo)  # the real path, inside an album folder now
        name = display(photo.rel_path).rsplit("/", 1)[-1]
        return _accepted(jobs, jobs.submit_photo(source, name, data.job_request(), photo_id=photo.id))

    @post("/enhance", status_code=HTTP_202_ACCEPTED, sync_to_thread=True, request_max_body_size=MAX_REQUEST_BYTES,
          summary="Enhance an uploaded photo (multipart: 'file', and EnhanceBody's options as fields): starts a job",
          responses={**BAD_QUERY, 413: error_spec(f"the upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"),
                     **NO_PROMPTS, **UNREADABLE_PHOTO, **NO_ENHANCER})
    def enhance_upload(self, state: State, data: MultipartBody[EnhanceUpload]) -> Response[JobInfo]:
        jobs = _jobs(state)
        upload = data.file.file
        check_upload_size(upload)  # as search by upload
        name = Path(data.file.filename or "upload").name or "upload"
        return _accepted(jobs, jobs.submit_upload(upload, name, data.job_request()))


class JobsController(Controller):
    path = "/api/jobs/{job_id:str}"
    tags = ["enhance"]

    @get(summary="An enhancement job's state and progress", responses={**BAD_QUERY, **UNKNOWN_JOB})
    async def job(self, state: State, job_id: JobId) -> JobInfo:
        jobs = _jobs(state)
        return job_info(jobs.get(job_id), jobs.queue_position(job_id))

    @get("/result", summary="The enhanced image of a finished job (full size: as a download)",
         responses={200: ResponseSpec(data_container=bytes, media_type="image/*", generate_examples=False,
                                      description="the image"), **BAD_QUERY, **UNKNOWN_JOB, **NOT_READY})
    async def result(self, state: State, job_id: JobId) -> Any:
        job = _jobs(state).result(job_id)
        assert job.result is not None and job.media_type is not None  # (result() checked)
        return File(path=job.result, media_type=job.media_type, filename=job.result_name,
                    content_disposition_type="inline" if job.request.preview else "attachment",
                    headers={"Cache-Control": "private, no-store"})

    @delete(status_code=200, summary="Cancel a job and forget it (a finished one's result is deleted)",
            responses={**BAD_QUERY, **UNKNOWN_JOB})
    async def cancel(self, state: State, job_id: JobId) -> JobInfo:
        return job_info(_jobs(state).cancel(job_id), None, forgotten=True)

    # Litestar 2.25 answers OPTIONS on a path with a GET and a DELETE handler with the methods of only one of
    # them (the Allow header is made before the two are merged); this says both.
    @route(http_method=HttpMethod.OPTIONS, status_code=204, include_in_schema=False)
    async def allowed(self) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS"})
