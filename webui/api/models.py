"""Request and response bodies of the A1111-compatible API (field names, defaults and shapes as A1111's)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Txt2ImgBody(BaseModel):
    """`POST /sdapi/v1/txt2img`. A1111 accepts null for every field (meaning its default) and many fields this
    studio does not implement (hires fix, scripts, ...): those are accepted, echoed back in `parameters`, and
    named in `info.warnings` when set to something that would change the image."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"  # A1111's legacy field; used when sampler_name is not given
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    clip_skip: int | None = None  # not an A1111 field (it has override_settings.CLIP_stop_at_last_layers)
    eta: float | None = None  # None: the sampler's default (A1111's options eta_ancestral 1, eta_ddim 0)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    disable_extra_networks: bool | None = False
    infotext: str | None = None  # A1111 1.8+: fields not given in the body are taken from this infotext
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    distilled_cfg_scale: float | None = None  # Forge's field: guidance of guidance-distilled models (FLUX.1 dev)
    restore_faces: bool | None = None
    tiling: bool | None = None
    enable_hr: bool | None = False
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    script_name: str | None = None
    script_args: list[Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(default_factory=list, description="PNG files in base64, infotext in `parameters`")
    parameters: dict[str, Any]
    info: str = Field(description="a JSON string: infotexts, all_seeds, seed, all_prompts, sd_model_name, ...")


class PngInfoBody(BaseModel):
    image: str = Field(description="a PNG, JPEG or WebP in base64 (a `data:image/...;base64,` prefix is allowed)")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = -1
    need_inner_model: bool | None = False


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[dict[str, Any]] = Field(default_factory=list)


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free, used and total bytes of system memory")
    cuda: dict[str, Any] = Field(description="torch.cuda.memory_stats figures, or an error when there is no GPU")
