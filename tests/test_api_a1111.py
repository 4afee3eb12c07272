"""The A1111 API as clients use it, against the launched server: `webuiapi`, every route's shape, request fields."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.ui_server import free_port
from webui.config import Settings

WAIT = 120
CAT = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 3, "sampler_name": "Euler a",
       "override_settings": {"sd_model_checkpoint": "tiny-sd1"}}  # fmt: skip
STYLES_CSV = 'name,prompt,negative_prompt\nanime,"anime style, {prompt}",lowres\nsharp,sharp focus,blurry\n'


@pytest.fixture(scope="module")
def served(tiny_models_dir, tmp_path_factory):
    """The app as `python launch.py --api` runs it, over a models folder that uses the tiny models and an A1111
    install in place (extra_model_paths.toml), each with a styles.csv."""
    from webui.app import open_context, serve

    scratch = tmp_path_factory.mktemp("api-a1111")
    models, install = scratch / "models", scratch / "stable-diffusion-webui"
    (install / "models" / "Lora").mkdir(parents=True)
    models.mkdir()
    (models / "tokenizers").symlink_to(tiny_models_dir / "tokenizers")  # the tiny CLIP tokenizer
    (models / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    (install / "styles.csv").write_text("name,prompt,negative_prompt\nfrom a1111,film grain,\n", encoding="utf-8")
    kinds = {"checkpoint": "checkpoints", "vae": "vae", "lora": "loras", "embedding": "embeddings",
             "upscaler": "upscalers"}  # fmt: skip
    folders = ", ".join(f'{k} = "{v}"' for k, v in kinds.items())
    (models / "extra_model_paths.toml").write_text(
        f'[[roots]]\npath = "{tiny_models_dir}"\nfolders = {{ {folders} }}\n\n'
        f'[[roots]]\npath = "{install}"\npreset = "a1111"\n',
        encoding="utf-8",
    )
    settings = Settings(
        models_dir=models, outputs_dir=scratch / "outputs", port=free_port(), settings_file=scratch / "s.json",
        api=True,
    )  # fmt: skip
    context = open_context(settings)
    context.library.hash_all()
    running, url = serve(settings, block=False, context=context)
    try:
        yield url.rstrip("/"), settings
    finally:
        running.close()
        context.queue.stop(timeout=30)
        context.library.stop_background_hashing()


@pytest.fixture
def api(served):
    url, _ = served
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        yield client


def image_of(encoded: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def txt2img(api: httpx.Client, **changes) -> tuple[dict, list[Image.Image]]:
    response = api.post("/sdapi/v1/txt2img", json={**CAT, **changes})
    assert response.status_code == 200, response.text
    body = response.json()
    return json.loads(body["info"]), [image_of(i) for i in body["images"]]


def test_webuiapi_drives_the_server(served):
    webuiapi = pytest.importorskip("webuiapi")
    url, settings = served
    client = webuiapi.WebUIApi(host="127.0.0.1", port=settings.port, sampler="Euler a", steps=2)  # calls /scripts
    assert client.get_scripts() == {"txt2img": [], "img2img": []}
    result = client.txt2img(
        prompt="a red hat", width=32, height=32, seed=5, override_settings={"sd_model_checkpoint": "tiny-sd1"}
    )
    assert len(result.images) == 1 and result.images[0].size == (32, 32)
    assert result.info["all_seeds"] == [5] and "Steps: 2, Sampler: Euler a" in result.info["infotexts"][0]
    assert result.info["warnings"] == []  # webuiapi's defaults (eta 1, s_tmax 0, ...) change nothing here
    upscalers = [u["name"] for u in client.get_upscalers()]
    assert upscalers == ["None", "Lanczos", "Nearest", "tiny-2x-esrgan", "tiny-4x-realesrgan"]
    assert [m["name"] for m in client.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    source = Image.new("RGB", (40, 24), (200, 30, 30))
    done = client.img2img(
        images=[source], prompt="a red hat", width=32, height=32, seed=5, denoising_strength=0.0,
        override_settings={"sd_model_checkpoint": "tiny-sd1"},
    )  # fmt: skip
    assert done.images[0].size == (32, 32) and done.info["denoising_strength"] == 0.0
    assert done.images[0].getpixel((16, 16)) == (200, 30, 30)  # strength 0: the input, resized
    upscaled = client.extra_single_image(source, upscaler_1="tiny-2x-esrgan", upscaling_resize=2)
    assert upscaled.image.size == (80, 48) and "Postprocess upscaler: tiny-2x-esrgan" in upscaled.info
    embeddings = client.get_embeddings()
    assert set(embeddings) == {"loaded", "skipped"} and embeddings["loaded"]  # the tiny textual inversions
    assert all({"shape", "vectors"} <= set(item) for item in embeddings["loaded"].values())
    memory = client.get_memory()
    assert memory["ram"]["total"] >= memory["ram"]["used"] > 0 and memory["cuda"] == {"error": "unavailable"}
    assert client.skip() == {}
    assert [s["name"] for s in client.get_prompt_styles()] == ["anime", "sharp", "from a1111"]
    assert any(name.startswith("tiny-sd1.safetensors [") for name in client.util_get_model_names())


def test_every_missing_route_answers_in_a1111s_shape(api):
    assert api.get("/sdapi/v1/script-info").json() == []
    assert api.post("/sdapi/v1/refresh-embeddings").status_code == 200
    flags = api.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["listen"] is False and flags["gradio_auth"] is False
    assert api.get("/internal/ping").json() == {}
    assert api.post("/sdapi/v1/unload-checkpoint").json() == {}
    info, images = txt2img(api)  # loads the model again by itself
    assert len(images) == 1
    assert api.post("/sdapi/v1/reload-checkpoint").json() == {}
    schema = api.get("/openapi.json").json()
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/options", "/sdapi/v1/skip", "/sdapi/v1/memory", "/internal/ping"):
        assert path in schema["paths"]
    docs = api.get("/docs")
    assert docs.status_code == 200 and "/sdapi/v1/txt2img" in docs.text and "http" not in docs.text.lower()


def test_styles_apply_to_the_prompts_as_a1111(api):
    info, _ = txt2img(api, prompt="a cat", negative_prompt="ugly", styles=["anime", "sharp", "from a1111"])
    assert info["prompt"] == "anime style, a cat, sharp focus, film grain"
    assert info["negative_prompt"] == "ugly, lowres, blurry" and info["styles"] == ["anime", "sharp", "from a1111"]
    assert info["infotexts"][0].startswith("anime style, a cat, sharp focus, film grain\nNegative prompt: ugly,")
    response = api.post("/sdapi/v1/txt2img", json={**CAT, "styles": ["nope"]})
    assert response.status_code == 422 and "anime, sharp, from a1111" in response.text


def test_eta_and_variation_seeds_are_honoured(api):
    info, _ = txt2img(api, eta=0.5, subseed=42, subseed_strength=0.25, batch_size=2)
    assert info["all_seeds"] == [3, 3] and info["all_subseeds"] == [42, 43]
    assert (info["subseed"], info["subseed_strength"]) == (42, 0.25)
    assert "Eta: 0.5" in info["infotexts"][0] and "Variation seed: 42, Variation seed strength: 0.25" in (
        info["infotexts"][0]
    )
    info, _ = txt2img(api, s_churn=0.5, seed_resize_from_w=64)
    assert "s_churn: 0.5 is not supported here; ignored" in info["warnings"]
    assert any(w.startswith("seed_resize_from_w") for w in info["warnings"])


@pytest.mark.parametrize(("samples_format", "pil"), [("jpg", "JPEG"), ("webp", "WEBP")])
def test_samples_format_gives_jpeg_or_webp_with_the_infotext_in_exif(api, samples_format, pil):
    overrides = {**CAT["override_settings"], "samples_format": samples_format}
    info, (image,) = txt2img(api, override_settings=overrides)
    assert image.format == pil
    raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\x00") and raw[8:].decode("utf-16-be") == info["infotexts"][0]
    buffer = io.BytesIO()
    image.save(buffer, format=pil, exif=image.getexif().tobytes())
    read = api.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert read["info"] == info["infotexts"][0] and read["parameters"]["Seed"] == "3"
    assert api.get("/sdapi/v1/options").json()["samples_format"] == "png"  # restored afterwards


def test_override_settings_can_be_kept(api):
    kept = {**CAT["override_settings"], "samples_format": "webp"}
    txt2img(api, override_settings=kept, override_settings_restore_afterwards=False)
    try:
        assert api.get("/sdapi/v1/options").json()["samples_format"] == "webp"
        _, (image,) = txt2img(api, override_settings={})
        assert image.format == "WEBP"
    finally:
        api.post("/sdapi/v1/options", json={"samples_format": "png"})


def test_infotext_fills_what_the_body_does_not_set(api):
    infotext = (
        "a fox in snow\nNegative prompt: rain\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, "
        "Seed: 77, Size: 32x40, Model: tiny-sd1, Variation seed: 5, Variation seed strength: 0.1"
    )
    response = api.post("/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 2})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["prompt"], info["negative_prompt"]) == ("a fox in snow", "rain")
    assert (info["seed"], info["cfg_scale"]) == (77, 5.5)
    assert (info["steps"], info["width"], info["height"], info["sampler_name"]) == (2, 32, 40, "DPM++ 2M")  # body wins
    assert "Schedule type: Karras" in info["infotexts"][0] and info["all_subseeds"] == [5]


def test_disable_extra_networks_leaves_lora_tags_unapplied(api):
    info, _ = txt2img(api, prompt="a cat <lora:tiny-sd1-kohya:0.8>")
    assert [lora["name"] for lora in info["loras"]] == ["tiny-sd1-kohya"]
    info, _ = txt2img(api, prompt="a cat <lora:tiny-sd1-kohya:0.8>", disable_extra_networks=True)
    assert info["loras"] == [] and "<lora:tiny-sd1-kohya:0.8>" in info["infotexts"][0]


def test_unreadable_lora_tags_generate_and_are_reported(api):
    info, images = txt2img(api, prompt="a cat <lora:tiny-sd1-kohya:abc> <hypernet:x:1>")
    assert len(images) == 1
    assert any(w.startswith("<lora:tiny-sd1-kohya:abc>: weight 'abc'") for w in info["warnings"])
    assert any(w.startswith("<hypernet:x:1>: 'hypernet' extra networks are not supported") for w in info["warnings"])


@pytest.mark.slow  # 151 steps: ~10 s on 2 CPU cores
def test_info_carries_the_version_and_big_steps_and_cfg_pass(api):
    info, _ = txt2img(api, steps=151, cfg_scale=31.5, width=33, height=32, sampler_name="Euler")
    assert info["version"].startswith("webui ") and info["steps"] == 151 and info["cfg_scale"] == 31.5
    assert "Size: 33x32" in info["infotexts"][0]


def test_hires_fix_through_the_api(api):
    body = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "tiny-4x-realesrgan", "denoising_strength": 0.5,
            "hr_second_pass_steps": 1, "hr_sampler_name": "Euler", "width": 16, "height": 16}  # fmt: skip
    info, (image,) = txt2img(api, **body)
    assert image.size == (32, 32) and info["width"] == 16 and info["denoising_strength"] == 0.5
    text = info["infotexts"][0]
    for key in ("Size: 16x16", "Denoising strength: 0.5", "Hires upscale: 2", "Hires steps: 1",
                "Hires upscaler: tiny-4x-realesrgan"):  # fmt: skip
        assert key in text, key
    assert info["extra_generation_params"]["Hires upscaler"] == "tiny-4x-realesrgan" and info["warnings"] == []
    # The old hires fix's fields: generate at firstphase size, then resize to width x height.
    info, (image,) = txt2img(api, enable_hr=True, firstphase_width=16, firstphase_height=16, width=24, height=24,
                             denoising_strength=0.0, hr_upscaler="Nearest")  # fmt: skip
    assert image.size == (24, 24) and "Hires resize: 24x24" in info["infotexts"][0]
    for bad, field in (({"hr_upscaler": "4x-nothing"}, "hr_upscaler"), ({"hr_scale": 20}, "hr_scale"),
                       ({"hr_sampler_name": "Eulr"}, "hr_sampler_name")):  # fmt: skip
        response = api.post("/sdapi/v1/txt2img", json={**CAT, "enable_hr": True, **bad})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == field, response.text
    response = api.post("/sdapi/v1/txt2img", json={**CAT, "refiner_checkpoint": "no-such-refiner"})
    assert response.status_code == 404 and "refiner_checkpoint" in response.text


def test_img2img_and_extras_routes_answer_in_a1111s_shape(api):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 10)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    body = {**CAT, "init_images": [encoded], "denoising_strength": 0.5, "resize_mode": 1}
    response = api.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    info = json.loads(result["info"])
    assert image_of(result["images"][0]).size == (32, 32) and result["parameters"]["init_images"] is None
    assert "Denoising strength: 0.5" in info["infotexts"][0] and info["denoising_strength"] == 0.5
    masked = api.post("/sdapi/v1/img2img", json={**body, "mask": encoded})
    assert masked.status_code == 422 and "inpainting" in masked.text
    broken = api.post("/sdapi/v1/img2img", json={**body, "init_images": ["not base64!"]})
    assert broken.status_code == 422 and broken.json()["detail"][0]["loc"][-1] == "init_images"
    extras = {"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 50, "upscaling_resize_h": 30}
    batch = api.post("/sdapi/v1/extra-batch-images", json={**extras, "imageList": [{"data": encoded, "name": "a"}] * 2})
    assert batch.status_code == 200, batch.text
    assert [image_of(i).size for i in batch.json()["images"]] == [(50, 30), (50, 30)]  # cropped to the size asked
    assert "Postprocess upscale to: 50x30" in batch.json()["html_info"]
    face = api.post("/sdapi/v1/extra-single-image", json={"image": encoded, "gfpgan_visibility": 1})
    assert face.status_code == 422 and "face restoration" in face.text
