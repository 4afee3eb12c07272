"""The UI's plain parts: launch flags, the settings file, image metadata, .ckpt conversion, trigger words, badges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.config import Settings, launch_parser, settings_from_args
from webui.engine.image_metadata import read_image_metadata
from webui.engine.samplers import LCM_PRESET, TURBO_PRESET
from webui.families import Family
from webui.models.files import read_header
from webui.models.identify import identify
from webui.models.kinds import FileFormat, Kind
from webui.models.library import open_library
from webui.ui import families, model_info
from webui.ui.convert import convert_to_safetensors
from webui.ui.preferences import FAMILY_SAMPLER, Preferences, PreferencesStore, preferences_from_widgets


def test_launch_flags_become_settings(tmp_path):
    args = launch_parser().parse_args(
        [
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--attention-slicing",
            "off",
            "--ram-budget-gb",
            "4",
            "--vram-budget-gb",
            "6.5",
            "--settings-file",
            str(tmp_path / "s.json"),
        ]
    )
    settings = settings_from_args(args)
    assert (settings.device, settings.precision, settings.attention_slicing) == ("cpu", "fp32", "off")
    assert (settings.ram_budget_gb, settings.vram_budget_gb) == (4.0, 6.5)
    assert settings.settings_path == tmp_path / "s.json"
    untouched = settings_from_args(launch_parser().parse_args([]))
    assert untouched.device is None and untouched.settings_path.name == "settings.json"
    with pytest.raises(ValueError, match="ram_budget_gb: -1"):
        Settings(ram_budget_gb=-1)


def test_settings_file_is_written_atomically_and_read_back(tmp_path):
    path = tmp_path / "conf" / "settings.json"
    store = PreferencesStore(path)
    assert store.current == Preferences() and not path.exists()
    wanted = Preferences(steps=30, cfg_scale=5.5, sampler="Euler a", device="cpu", ram_budget_gb=2.0)
    store.save(wanted)
    assert json.loads(path.read_text())["steps"] == 30
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temp file left behind
    assert PreferencesStore(path).current == wanted


def test_settings_file_with_bad_values_keeps_the_good_ones(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"steps": 999, "cfg_scale": 4, "sampler": 3, "colour": "red"}))
    store = PreferencesStore(path)
    assert store.current.steps == 20 and store.current.cfg_scale == 4.0 and store.current.sampler == FAMILY_SAMPLER
    assert any("steps" in n for n in store.notes) and any("colour" in n for n in store.notes)
    path.write_text("{not json")
    assert PreferencesStore(path).current == Preferences()


def test_preferences_from_widgets_and_cli_flags_win():
    prefs = preferences_from_widgets({"steps": 12.0, "width": 0.0, "ram_budget_gb": 1.5, "device": "cpu"})
    assert prefs.steps == 12 and isinstance(prefs.steps, int) and prefs.ram_budget_gb == 1.5
    with pytest.raises(ValueError, match="steps: 2.5 is not a whole number"):
        preferences_from_widgets({"steps": 2.5})
    with pytest.raises(ValueError, match="device: 'tpu'"):
        preferences_from_widgets({"device": "tpu"})
    assert prefs.with_cli(Settings(device="cuda", vram_budget_gb=3.0)).device == "cuda"


def _png(path: Path, **text: str) -> Path:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_image_metadata_of_a1111_comfyui_and_invokeai(tmp_path):
    ours = read_image_metadata(_png(tmp_path / "a.png", parameters="cat\nSteps: 2, Seed: 1, Size: 8x8"))
    assert ours.parameters.startswith("cat\nSteps: 2") and ours.other == {}
    comfy = read_image_metadata(_png(tmp_path / "c.png", prompt='{"3": {"class_type": "KSampler"}}', workflow="{}"))
    assert comfy.parameters is None
    assert '"class_type": "KSampler"' in comfy.other["ComfyUI prompt (API graph)"]
    invoke = read_image_metadata(_png(tmp_path / "i.png", invokeai_metadata='{"positive_prompt": "owl"}'))
    assert "owl" in invoke.other["InvokeAI metadata"]
    jpeg = tmp_path / "a1111.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "dog\nSteps: 4, Seed: 9".encode("utf-16-be")
    Image.new("RGB", (8, 8)).save(jpeg, exif=exif)
    assert read_image_metadata(jpeg).parameters == "dog\nSteps: 4, Seed: 9"


def test_ckpt_converts_to_safetensors_beside_it_never_overwriting(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_models_dir / "checkpoints" / "tiny-sd1.ckpt", models / "checkpoints")
    library = open_library(models)
    (entry,) = [e for e in library.scan() if e.kind is Kind.CHECKPOINT]
    target = convert_to_safetensors(entry)
    assert target == models / "checkpoints" / "tiny-sd1.safetensors"
    header = read_header(target)
    assert header.format is FileFormat.SAFETENSORS and header.metadata["converted_from"] == "tiny-sd1.ckpt"
    assert identify(header).family is Family.SD1
    assert read_header(entry.path).shapes == header.shapes
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        convert_to_safetensors(entry)
    converted = next(e for e in library.refresh() if e.format is FileFormat.SAFETENSORS)
    with pytest.raises(ValueError, match="only legacy pickle files"):
        convert_to_safetensors(converted)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-sd1.ckpt", "tiny-sd1.safetensors"]


def test_a_diffusers_folder_converts_to_one_single_file_beside_it(tiny_models_dir, tmp_path):
    from safetensors.torch import load_file

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "checkpoints/tiny-sd1-diffusers", models / "checkpoints/tiny-sd1-diffusers")
    library = open_library(models)
    (entry,) = [e for e in library.scan() if e.kind is Kind.CHECKPOINT]
    assert model_info.details(entry) and entry.format is FileFormat.DIFFUSERS
    target = convert_to_safetensors(entry)
    assert target == models / "checkpoints/tiny-sd1-diffusers.safetensors"
    single = load_file(tiny_models_dir / "checkpoints/tiny-sd1.safetensors")
    converted = load_file(target)
    assert converted.keys() == single.keys() and all((converted[k] == single[k]).all() for k in single)
    library.refresh()
    details = model_info.details(library.find("tiny-sd1-diffusers.safetensors"))
    assert details["merge_summary"].startswith("No interpolation: tiny-sd1-diffusers")  # the recipe it carries
    with pytest.raises(FileExistsError):
        convert_to_safetensors(entry)


def test_lora_details_give_family_and_trigger_words(tiny_models_dir):
    library = open_library(tiny_models_dir)
    library.scan()
    entry = library.find("tiny-sd1-kohya", Kind.LORA)
    details = model_info.details(entry)
    assert details["target_family"] == "SD1.x"
    assert details["trigger_words"][:2] == ["tinytrigger", "red hat"]  # most frequent first
    assert isinstance(details["metadata"]["ss_tag_frequency"], dict)
    assert model_info.trigger_words({"modelspec.trigger_phrase": "zzz, yyy"}) == ["zzz", "yyy"]


def test_family_badges_sizes_and_distilled_presets(tiny_models_dir):
    library = open_library(tiny_models_dir)
    library.scan()
    sdxl = library.find("tiny-sdxl.safetensors", Kind.CHECKPOINT)
    sd2 = library.find("tiny-sd2.safetensors", Kind.CHECKPOINT)
    assert families.badge(sdxl) == "SDXL" and families.native_size(sdxl) == (1024, 1024)
    assert families.badge(sd2) == "SD2.x · v-pred" and families.native_size(sd2) == (768, 768)
    assert families.native_size(library.find("tiny-sd1.safetensors", Kind.CHECKPOINT)) == (512, 512)
    turbo = type(sdxl)(**{**sdxl.__dict__, "name": "sdxl_turbo_1.0"})
    lcm = type(sdxl)(**{**sdxl.__dict__, "name": "dreamshaper-LCM"})
    assert families.distilled_preset(turbo) is TURBO_PRESET and families.badge(turbo) == "SDXL · distilled"
    assert families.distilled_preset(lcm) is LCM_PRESET and families.distilled_preset(sdxl) is None
