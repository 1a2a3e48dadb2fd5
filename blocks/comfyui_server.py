"""The ComfyUI server block: where a render server is and how to talk to it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from tower.comfyui import ComfyUIClient, limit_name, preview_limit_name, server_identity
from tower.planning.vram import GPU_PROFILES
from tower.runtime.pool import DEFAULT_QUEUE_DEPTH
from tower.shotlist.errors import Whole
from tower.shotlist.names import check_name

DEFAULT_VRAM_PROFILE = "12gb"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


class ComfyUIServer(Block):
    """One ComfyUI server: URL, credentials, TLS, timeouts, VRAM budget and queue depth.

    ``max_queue_depth`` is how many batches may sit on the server at once (one running,
    the rest waiting), across every flow run: the render flows hold one slot of the
    Prefect global concurrency limit ``comfyui-<name>`` per batch. A server made from a
    bare URL is named ``host-port`` (:func:`tower.comfyui.server_identity`).
    """

    _block_type_name = "ComfyUI Server"
    _block_type_slug = "comfyui-server"
    _description = "A ComfyUI render server used by the Tower flows."

    name: str = Field(description="Short server name used in logs, metrics and limits.")
    base_url: str = Field(description="http(s)://host:port of the ComfyUI server.")
    auth_header: str = Field(default="Authorization",
                             description="Header that carries the token.")
    token: SecretStr | None = Field(default=None, description="API token, if any.")
    verify_tls: bool = Field(default=True, description="Check TLS certificates.")
    # Infinite seconds or budgets are typos that would make a wait or a plan endless.
    timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False,
                             description="Seconds per HTTP request.")
    connect_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False,
                                     description="Seconds to connect.")
    render_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                           description="Give up on one batch after this.")
    gpu_profile: str | None = Field(default=None,
                                    description=f"One of {', '.join(GPU_PROFILES)}.")
    vram_budget_mb: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                         description="VRAM the planner may fill (MB).")
    max_queue_depth: Whole = Field(default=DEFAULT_QUEUE_DEPTH, ge=1, le=16)
    speed: float = Field(default=1.0, gt=0, allow_inf_nan=False,
                         description="Relative speed for the planner.")

    _name = field_validator("name")(check_name)

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises for a port that is no number or out of range
        except ValueError:
            raise ValueError(f"port must be a number up to 65535 (got {value!r})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s)://host:port URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("auth_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        """A header name with a space or line break would corrupt every request."""
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"must be an HTTP header name such as Authorization "
                             f"(got {value!r})")
        return value

    @field_validator("gpu_profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in GPU_PROFILES:
            raise ValueError(f"unknown GPU profile {value!r}; known: {', '.join(GPU_PROFILES)}")
        return value

    @model_validator(mode="after")
    def _budget_or_profile(self) -> ComfyUIServer:
        if self.vram_budget_mb is None and self.gpu_profile is None:
            self.gpu_profile = DEFAULT_VRAM_PROFILE
        return self

    @classmethod
    def from_url(cls, url: str, name: str | None = None, **fields: object) -> ComfyUIServer:
        """An unsaved block for a bare URL (first runs need no saved blocks).

        Unnamed, it is named ``host-port``, as the client and the metrics name it.
        """
        return cls(name=name or server_identity(url), base_url=url, **fields)

    @property
    def budget_mb(self) -> float:
        """The VRAM budget: explicit, else the GPU profile's."""
        if self.vram_budget_mb is not None:
            return self.vram_budget_mb
        return float(GPU_PROFILES[self.gpu_profile or DEFAULT_VRAM_PROFILE].budget_mb)

    @property
    def limit_name(self) -> str:
        """The Prefect global concurrency limit that caps batches on this server.

        ``comfyui-<name>``, verbatim (:func:`tower.comfyui.limit_name`).
        """
        return limit_name(self.name)

    @property
    def preview_limit_name(self) -> str:
        """The limit of previews: one batch per server on top of ``max_queue_depth``.

        Previews go to the front of the queue; a slot of their own means a preview
        never waits behind a nightly run that holds every regular slot.
        """
        return preview_limit_name(self.name)

    def slot_limit(self, front: bool) -> str:
        """The limit a batch holds a slot of: the preview one for front-of-queue batches."""
        return self.preview_limit_name if front else self.limit_name

    def get_client(self) -> ComfyUIClient:
        """A client for this server (close it, or use it as a context manager)."""
        token = self.token.get_secret_value() if self.token is not None else None
        return ComfyUIClient(self.base_url, token=token, auth_header=self.auth_header,
                             verify=self.verify_tls, timeout=self.timeout_s,
                             connect_timeout=self.connect_timeout_s, name=self.name)
