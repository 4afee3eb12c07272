"""Generation engine: pipelines, caching, device policy. Never imports gradio."""
