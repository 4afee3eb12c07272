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
    denoising_strength: float | None = None  # None: 0.75 (A1111's API default)
    firstphase_width: int | None = 0  # A1111's old hires fix: generate at this size, then resize to width/height
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None  # None: "Latent" (A1111's latent_upscale_default_mode)
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    hr_cfg: float | None = None  # Forge's hires CFG scale (None: the first pass's)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    script_name: str | None = None
    script_args: list[Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False


class Img2ImgBody(Txt2ImgBody):
    """`POST /sdapi/v1/img2img`: txt2img's fields (Hires. fix aside) plus the input image(s), A1111's
    `resize_mode` (0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)) and
    `denoising_strength`. Inpainting (`mask`) is refused: it is not supported here."""

    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = None
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    include_init_images: bool | None = False


class ExtrasBody(BaseModel):
    """A1111's extras fields common to `extra-single-image` and `extra-batch-images` (upscaling only here:
    GFPGAN and CodeFormer face restoration are refused when asked for)."""

    model_config = ConfigDict(extra="allow")

    resize_mode: int | None = 0  # 0: scale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = 0
    codeformer_visibility: float | None = 0
    codeformer_weight: float | None = 0
    upscaling_resize: float | None = 2
    upscaling_resize_w: int | None = 512
    upscaling_resize_h: int | None = 512
    upscaling_crop: bool | None = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float | None = 0
    upscale_first: bool | None = False


class ExtrasSingleImageBody(ExtrasBody):
    image: str = Field(description="a PNG, JPEG or WebP in base64")


class FileData(BaseModel):
    data: str = Field(description="the image in base64")
    name: str = ""


class ExtrasBatchImagesBody(ExtrasBody):
    imageList: list[FileData]  # noqa: N815 (A1111's field name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


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
