"""The operator console: static HTML/JS/CSS served by the control plane itself.

No build step and no separate server: the files under ``control_plane/console/``
are plain ES modules that call the same ``/api/v1`` routes (and so need the same
tokens and roles) as the CLI. The static files themselves need no token; the
operator pastes one into the console, which keeps it in the browser's storage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"
CONSOLE_PATH = "/console"

router = APIRouter(include_in_schema=False)


@router.get("/")
def redirect_root() -> RedirectResponse:
    return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)


@router.get(CONSOLE_PATH)
def redirect_console() -> RedirectResponse:
    """``/console`` to ``/console/`` so the page's relative asset URLs resolve."""
    return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)


def register_console(app: FastAPI) -> None:
    """Add the redirects and mount the static console at ``/console/``."""
    app.include_router(router)
    app.mount(CONSOLE_PATH, StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
