"""What the page says while the library holds no checkpoint or UNet: which folder takes which files, where.

Shown in place of the model bar (with its own Refresh), and as the one message Generate gives then.
Folder names come from the library's own layout (`webui.models.roots.OWN_LAYOUT`); paths are this
install's, absolute, so they can be pasted into a file manager.
"""

from __future__ import annotations

import html
from pathlib import Path

from webui.families import DESCRIPTIONS
from webui.models.kinds import Kind
from webui.models.library import ModelLibrary
from webui.models.roots import EXTRA_ROOTS_FILE, OWN_LAYOUT
from webui.models.tokenizers.lookup import USER_SUBDIR as TOKENIZERS_SUBDIR

WHAT_GOES_WHERE: tuple[tuple[Kind, str], ...] = (
    (Kind.CHECKPOINT, "full checkpoints from model sites (.safetensors, legacy .ckpt) or diffusers folders"),
    (Kind.UNET, "UNet-only files, used with text encoder and VAE files"),
    (Kind.TEXT_ENCODER, "text encoders (CLIP-L, OpenCLIP-H, OpenCLIP-bigG)"),
    (Kind.VAE, "VAEs"),
    (Kind.LORA, "LoRAs (kohya or diffusers/PEFT)"),
    (Kind.EMBEDDING, "textual-inversion embeddings"),
)
EXTRA_ROOTS_EXAMPLE = """[[roots]]
path = "~/stable-diffusion-webui"   # or your ComfyUI folder, with preset = "comfyui"
preset = "a1111"
"""


def _generating_families() -> list[str]:
    """The labels of the families a checkpoint can generate with today, in registration order."""
    return [d.label for d in DESCRIPTIONS if d.supported and d.txt2img]


def library_is_empty(library: ModelLibrary) -> bool:
    """No usable checkpoint and no usable UNet: nothing to generate with."""
    return not any(entry.usable for kind in (Kind.CHECKPOINT, Kind.UNET) for entry in library.entries(kind))


def _folder(library: ModelLibrary, name: str) -> Path:
    return library.models_dir.resolve() / name


def no_model_message(library: ModelLibrary) -> str:
    """Generate's one message when there is nothing to generate with."""
    return (
        f"No model yet: put a checkpoint (.safetensors) in {_folder(library, OWN_LAYOUT[Kind.CHECKPOINT][0])}/ "
        f"(or name an A1111/ComfyUI install in {_folder(library, EXTRA_ROOTS_FILE)}), then press Refresh."
    )


def empty_state_html(library: ModelLibrary) -> str:
    """The panel: the folders with what each takes, the extra-roots file, and what was found but is unusable."""
    rows = "".join(
        f"<tr><td><code>{html.escape(str(_folder(library, OWN_LAYOUT[kind][0])))}/</code>"
        + (f" (or <code>{html.escape('/'.join(OWN_LAYOUT[kind][1:]))}/</code>)" if len(OWN_LAYOUT[kind]) > 1 else "")
        + f"</td><td>{html.escape(what)}</td></tr>"
        for kind, what in WHAT_GOES_WHERE
    )
    tokenizers = html.escape(str(_folder(library, TOKENIZERS_SUBDIR)))
    rows += (
        f"<tr><td><code>{tokenizers}/</code></td><td>optional: your own tokenizer files "
        "(<code>clip/</code>, <code>t5/</code>, <code>qwen3/</code>); the ones bundled with webui are used otherwise"
        "</td></tr>"
    )
    unusable = [entry for entry in library.entries() if entry.problem]
    found = (
        f"<p class='empty-found'>{len(unusable)} file(s) found but not usable; the Models tab says why.</p>"
        if unusable
        else ""
    )
    problems = "".join(f"<li>{html.escape(problem)}</li>" for problem in library.problems)
    extra = html.escape(str(_folder(library, EXTRA_ROOTS_FILE)))
    return (
        "<div class='empty-state'>"
        "<h3>No model yet</h3>"
        f"<p>Download a checkpoint ({html.escape(' / '.join(_generating_families()))}, <code>.safetensors</code>) "
        "and put it in the first folder below, then press <b>Refresh</b>. Nothing is downloaded for you and "
        "nothing else is needed.</p>"
        f"<table class='empty-folders'><thead><tr><th>folder</th><th>what goes in it</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p>Already have an AUTOMATIC1111/Forge or ComfyUI install? Use its models in place (nothing is copied) by "
        f"naming it in <code>{extra}</code>:</p><pre>{html.escape(EXTRA_ROOTS_EXAMPLE.strip())}</pre>"
        f"{found}{f'<ul class=empty-problems>{problems}</ul>' if problems else ''}"
        "</div>"
    )
