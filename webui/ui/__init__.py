"""Gradio front end: one module per tab, each `build_tab(...)`. Never imports torch or diffusers."""
