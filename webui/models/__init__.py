"""Model library: find, identify and safely read model files. Never imports gradio."""
