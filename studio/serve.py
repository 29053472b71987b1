"""Serving the studio with uvicorn, and stopping it at once: the page's event streams never end by
themselves, so they are told to end before uvicorn waits for its connections to close."""

from __future__ import annotations

from types import FrameType

import uvicorn

from studio.app import create_app
from studio.state import Studio


class StudioServer(uvicorn.Server):
    """A uvicorn server for ``studio`` whose stop (Ctrl-C, :meth:`stop`) first ends the event streams."""

    def __init__(
        self,
        studio: Studio,
        host: str,
        port: int,
        *,
        token: str | None = None,
        hosts: set[str] | None = None,
    ) -> None:
        app = create_app(studio, token=token, hosts=hosts)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
        super().__init__(config)
        self.studio = studio

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.studio.closing.set()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Stop serving (from another thread)."""
        self.studio.closing.set()
        self.should_exit = True
