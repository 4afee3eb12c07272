"""The page's CSS (a module, not a file, so it ships with the package): compact, and stacking on a phone."""

CSS = """
/* webui: compact A1111-like layout that still stacks cleanly on a phone. */
#model-bar { align-items: center; gap: 8px; }
#model-bar .tool-button, .tool-button { max-width: 48px; min-width: 40px !important; font-size: 1.1rem; }
.family-badge {
  display: inline-block; padding: 4px 10px; border-radius: 999px; font-weight: 600; font-size: 0.85rem;
  background: var(--primary-100); color: var(--primary-700); border: 1px solid var(--primary-300); white-space: nowrap;
}
.family-badge.empty { background: var(--neutral-100); color: var(--neutral-500); border-color: var(--neutral-300); }
#model-status { font-size: 0.82rem; line-height: 1.35; color: var(--body-text-color-subdued); }
#model-status details summary { cursor: pointer; }
#model-status ul { margin: 2px 0 0 1rem; padding: 0; }
.model-note { color: var(--primary-600); }
#model-empty { border: 1px dashed var(--primary-300); border-radius: 8px; padding: 10px 14px; }
.empty-state h3 { margin: 0 0 4px 0; }
.empty-state p { margin: 4px 0; }
.empty-folders { font-size: 0.85rem; margin: 6px 0; }
.empty-folders td { padding: 2px 10px 2px 0; vertical-align: top; }
.empty-folders code, .empty-state pre { word-break: break-all; white-space: pre-wrap; }
.empty-state pre { font-size: 0.8rem; margin: 4px 0; }
.model-engine { color: var(--body-text-color-subdued); font-style: italic; }
#queue-bar { align-items: center; gap: 8px; min-height: 0; }
.queue-status { font-size: 0.82rem; color: var(--body-text-color-subdued); }
.queue-status.busy { color: #b45309; }
.queue-status.mine { color: var(--primary-600); font-weight: 600; }

.token-counter {
  display: block; text-align: right; font-size: 0.78rem; color: var(--body-text-color-subdued);
  margin-top: -6px; font-variant-numeric: tabular-nums;
}
#txt2img-buttons { justify-content: flex-start; gap: 8px; }
#txt2img-generate { min-height: 64px; font-size: 1.15rem; }

.gen-progress { font-size: 0.85rem; min-height: 1.6em; }
.gen-bar { height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; margin-bottom: 4px; }
.gen-fill { height: 100%; background: var(--primary-500); transition: width 0.2s ease; }
.gen-progress.interrupted .gen-fill { background: var(--neutral-400); }
.gen-detail { color: var(--body-text-color-subdued); }

.lora-row { padding: 6px; margin-bottom: 6px; }
.lora-report { font-size: 0.8rem; }
.lora-report.ok { color: #15803d; }
.lora-report.warn { color: #b45309; }
.lora-report.error { color: #b91c1c; }
.gen-warning { font-size: 0.8rem; color: #b45309; }
.lora-report.off { color: var(--body-text-color-subdued); }
.trigger-words label { font-size: 0.8rem; }

#txt2img-gallery { min-height: 240px; }

table.model-details { width: 100%; font-size: 0.82rem; border-collapse: collapse; margin-bottom: 8px; }
table.model-details th { text-align: left; vertical-align: top; white-space: nowrap; padding: 2px 10px 2px 0;
  color: var(--body-text-color-subdued); font-weight: 500; width: 1%; }
table.model-details td { padding: 2px 0; word-break: break-all; }
table.model-details pre { margin: 0; max-height: 240px; overflow: auto; font-size: 0.75rem; white-space: pre-wrap; }

@media (max-width: 640px) {
  #model-bar { flex-wrap: wrap; }
  #model-status { flex-basis: 100% !important; }
  #txt2img-buttons { flex-direction: row !important; }
  #txt2img-generate { min-height: 48px; }
  .gradio-container { padding: 4px !important; }
}

/* Token counters sit in the bottom-right corner of their prompt box, as in A1111. */
#txt2img-prompt-tokens, #txt2img-negative-tokens {
  margin-top: calc(-1 * var(--layout-gap) - 26px) !important; margin-right: 18px; position: relative; z-index: 5;
  pointer-events: none; min-height: 0 !important; margin-bottom: 6px;
}
"""
