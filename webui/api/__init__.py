"""A1111-compatible REST API (/sdapi/v1) over the shared job queue; mounted by the app, never imports gradio."""

from webui.api.options import ApiOptions
from webui.api.routes import build_api_router, client_host

__all__ = ["ApiOptions", "build_api_router", "client_host"]
