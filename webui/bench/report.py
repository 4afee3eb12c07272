"""Targets, the JSON report and its markdown table (figure, value, target, met?, what was measured)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.bench.machine import describe


@dataclass(frozen=True)
class Target:
    op: str | None  # ">=", "<=", or None: reported without a target
    value: float | None = None
    where: str = ""

    def met(self, value: float | None) -> bool | None:
        if value is None or self.op is None or self.value is None:
            return None
        return value >= self.value if self.op == ">=" else value <= self.value

    def label(self) -> str:
        if self.op is None:
            return "—"
        text = f"{'≥' if self.op == '>=' else '≤'} {self.value:g}"
        return f"{text} ({self.where})" if self.where else text


TARGETS: Mapping[str, Target] = {
    "engine_vs_diffusers_speed": Target(">=", 0.98),
    "request_overhead": Target("<=", 1.05, "at 512×512"),
    "cached_switch_vs_cold_load": Target("<=", 0.01),
    "cold_load_vs_file_read": Target("<=", 2),
    "vae_swap_ms": Target("<=", 20),
    "lora_weight_change_vs_step": Target("<=", 0.05),
    "lora_first_load_vs_file_read": Target(None),
    "memory_vs_unique_components": Target("<=", 1.1),
    "ui_roundtrip_vs_engine": Target("<=", 1.1, "at 512×512 on a GPU"),
    "merge_vs_file_read": Target(">=", 0.25),
    "hires_pass_vs_diffusers_img2img": Target("<=", 1.05),
}
FIGURES = tuple(TARGETS)


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.4g} MiB"


def _median(raw: Mapping[str, Any], key: str) -> float:
    return raw[key]["median"]


SUMMARIES: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "engine_vs_diffusers_speed": lambda r: (
        f"{_median(r, 'engine_it_s'):.3g} vs {_median(r, 'diffusers_it_s'):.3g} it/s"
    ),
    "request_overhead": lambda r: f"{_s(_median(r, 'engine_request_s'))} vs {_s(_median(r, 'bare_pipeline_s'))}",
    "cached_switch_vs_cold_load": lambda r: f"{_s(_median(r, 'switch_s'))} vs {_s(_median(r, 'cold_load_s'))}",
    "cold_load_vs_file_read": lambda r: (
        f"{_s(_median(r, 'cold_load_s'))} vs {_s(_median(r, 'file_read_s'))} for {_mb(r['file_bytes'])}"
    ),
    "vae_swap_ms": lambda r: f"{_s(_median(r, 'swap_s'))} per swap",
    "lora_weight_change_vs_step": lambda r: (
        f"{_s(_median(r, 'weight_change_s'))} vs {_s(_median(r, 'denoising_step_s'))} per step"
    ),
    "lora_first_load_vs_file_read": lambda r: (
        f"{_s(_median(r, 'first_load_s'))} vs {_s(_median(r, 'file_read_s'))} for {_mb(r['file_bytes'])}"
    ),
    "memory_vs_unique_components": lambda r: (
        f"peak +{_mb(r['rss_peak_growth_bytes'])} RSS for {_mb(r['unique_component_bytes'])} of components"
    ),
    "ui_roundtrip_vs_engine": lambda r: f"{_s(_median(r, 'ui_roundtrip_s'))} vs {_s(_median(r, 'engine_request_s'))}",
    "merge_vs_file_read": lambda r: (
        f"{_mb(_median(r, 'merge_bytes_per_s'))}/s vs {_mb(_median(r, 'file_read_bytes_per_s'))}/s for "
        f"{_mb(r['input_bytes'])}; peak +{_mb(r['peak_rss'].get('peak_rss_growth_bytes', 0))} RSS"
    ),
    "hires_pass_vs_diffusers_img2img": lambda r: (
        f"{_s(_median(r, 'engine_hires_pass_s'))} vs {_s(_median(r, 'diffusers_img2img_s'))} at "
        f"{r['target'][0]}×{r['target'][1]}"
    ),
}


LEGEND = (
    "value: ratio of the medians (vae_swap_ms: the median); fastest runs: the same ratio over each side's least "
    "disturbed run. On a shared machine, trust a figure where the two agree."
)


def _value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[met]


def _table(block: Mapping[str, Any]) -> list[str]:
    lines = ["| figure | value | target | met? | measured |", "| --- | --- | --- | --- | --- |"]
    for key in FIGURES:
        raw = block["raw"].get(key) or {}
        try:
            summary = SUMMARIES[key](raw) if raw else block["notes"].get(key, "")
        except KeyError:
            summary = ""
        if raw.get("fastest_runs_ratio") is not None:
            summary += f"; fastest runs: {raw['fastest_runs_ratio']:.3g}"
        lines.append(
            f"| {key} | {_value(block[key])} | {TARGETS[key].label()} | {_met(block['met'][key])} | {summary} |"
        )
    return lines


def _settings_line(settings: Mapping[str, Any]) -> str:
    return (
        f"{settings['model']}: {settings['width']}×{settings['height']}, {settings['steps']} steps, "
        f"{settings['sampler']}, CFG {settings['cfg_scale']:g}; median of {settings['repeats']} runs "
        f"({settings['fast_repeats']} for millisecond figures) after {settings['warmup']} warm-up"
    )


def markdown(report: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v and k in ("torch", "diffusers"))
    lines = [
        f"### `bench --size {report['size']}` on {report['device']} ({report['dtype']})",
        "",
        f"Machine: {describe(report['machine'])}; {versions}. Measured {report['date']}, "
        f"{report['total_seconds']:.0f} s in all.",
        "",
    ]
    for block in [report, *report.get("more_families", {}).values()]:
        lines += [_settings_line(block["settings"]), "", *_table(block), "", LEGEND, ""]
        for key, note in block["notes"].items():
            lines.append(f"- {key}: {note}")
        lines.append("")
    lines += _transformer_lines(report.get("transformer_families") or {})
    return "\n".join(lines).rstrip() + "\n"


def _transformer_lines(families: Mapping[str, Any]) -> list[str]:
    """The DiT families' figures (webui.bench.dit_figures) as a list per family."""
    lines = []
    for name, figures in families.items():
        lines.append(f"Transformer family {name}:")
        if "skipped" in figures:
            lines.append(f"- skipped: {figures['skipped']}")
        if "engine_vs_diffusers_speed" in figures:
            lines.append(
                f"- engine vs plain diffusers it/s: {figures['engine_vs_diffusers_speed']:.3g} "
                f"({figures['engine_it_s']['median']:.3g} vs {figures['diffusers_it_s']['median']:.3g}; "
                f"latents differ by {figures['latents_max_abs_difference']:.3g})"
            )
            lines.append(
                f"- prompt-embedding cache reuse (new / cached prompt time): {figures['prompt_cache_reuse']:.3g}"
            )
        for storage in ("bf16", "fp8"):
            step = figures.get(storage)
            if step is None:
                continue
            if "skipped" in step:
                lines.append(f"- {storage}: skipped, {step['skipped']}")
            else:
                lines.append(
                    f"- {storage} storage: {step['s_per_it']['median']:.3g} s/it at {step['size']}, "
                    f"weights {_mb(step['weights_bytes'])}"
                )
        if "fp8_vs_bf16_speed" in figures:
            speed, weights = figures["fp8_vs_bf16_speed"], figures["fp8_vs_bf16_weights"]
            lines.append(f"- fp8 vs bf16 speed: {speed:.3g}, weights ×{weights:.2f}")
        lines.append("")
    return lines


def family_block(settings: dict[str, Any], figures: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Figure values (top-level keys), targets, met?, raw numbers and notes for one family's run."""
    block: dict[str, Any] = {"settings": settings}
    notes: dict[str, str] = {}
    raw: dict[str, Any] = {}
    for key in FIGURES:
        figure = figures.get(key)
        block[key] = None if figure is None else figure.value
        raw[key] = None if figure is None else figure.raw
        if figure is not None and figure.note:
            notes[key] = figure.note
    block["targets"] = {key: TARGETS[key].label() for key in FIGURES}
    block["met"] = {key: TARGETS[key].met(block[key]) for key in FIGURES}
    block["raw"] = raw
    block["notes"] = notes
    block.update(extra)
    return block


def write(report: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write `<size>-<device>.json` and `.md` under `out_dir`; returns the report with their paths under "files"."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['size']}-{report['device']}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    written = {**report, "files": {"json": str(json_path), "markdown": str(md_path)}}
    json_path.write_text(json.dumps(written, indent=2, default=str) + "\n")
    md_path.write_text(markdown(written))
    return written
