"""webui: a local Stable Diffusion studio in the browser."""

__version__ = "0.1.0"
