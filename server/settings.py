"""The one settings model: environment variables MODELYARD_*, mirrored by CLI flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    models: Path = Field(Path("models.yaml"), description="The model registry file.")
    budget_mb: int | None = Field(
        None, ge=1, description="Memory budget in MiB (default: 12288 of GPU memory, or a share of RAM)."
    )
    api_keys: CommaList = Field(default_factory=list, description="Accepted bearer keys, comma-separated.")
    insecure_no_auth: bool = Field(False, description="Allow a non-loopback bind without an API key.")
    cors_origins: CommaList = Field(default_factory=list, description="Allowed CORS origins (off if empty).")
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Host names a loopback-bound server also answers to, comma-separated (e.g. "
        "host.docker.internal for Open WebUI in Docker Desktop); localhost and loopback addresses always.",
    )
    model_dirs: CommaList = Field(
        default_factory=list,
        description="Directories model files may live in (default: the registry's own directory "
        "and the demo-model cache).",
    )
    cache_dir: Path = Field(
        Path("~/.cache/modelyard").expanduser(), description="Where generated demo models are cached."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Cap on a JSON request body.")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Cap on a multipart upload.")
    image_ttl_s: float = Field(3600.0, gt=0, le=7 * 86400, description="How long an image URL stays fetchable.")
    image_store_mb: int = Field(256, ge=1, description="Memory held for image URLs (oldest dropped first).")
    # Images in chat requests (server/image_input.py): data: URLs always; http(s) URLs only from these hosts.
    image_fetch_hosts: CommaList = Field(
        default_factory=list, description="Hosts whose http(s) image URLs chat requests may name, comma-separated "
        "(default none: only data: URLs; a server fetching any URL is an SSRF hole). Private addresses are "
        "refused even for these hosts.")
    image_fetch_timeout_s: float = Field(10.0, gt=0, le=300, description="Longest an image fetch may take.")
    image_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Cap on one image's encoded bytes.")
    image_max_pixels: int = Field(40_000_000, ge=64, description="Cap on one image's pixels, read from its header "
                                  "before decoding (decompression bombs).")
    response_ttl_s: float = Field(3600.0, gt=0, le=7 * 86400,
                                  description="How long a stored response (store: true) stays retrievable.")
    response_store_max: int = Field(1000, ge=0, description="Stored responses kept (oldest dropped first).")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a model before 503.")
    queue_timeout_s: float = Field(300.0, gt=0, description="Longest a request waits for a model.")
    load_timeout_s: float = Field(600.0, gt=0, description="Longest a model load may take.")
    unload_timeout_s: float = Field(30.0, gt=0, description="Longest to wait for memory to read free (and for a park).")
    worker_overhead_mb: int | None = Field(
        None, ge=0, description="Runtime cost of one worker process (default: 300 on GPU, 60 on CPU)."
    )
    # The scheduler (issue 9): the warm tier and swap-minimising admission.
    ram_budget_mb: int | None = Field(
        None, ge=0, description="System RAM for parked models (the warm tier); 0 turns parking off "
        "(default: half the RAM beside a GPU, a quarter without one).")
    park_dir: Path = Field(Path("/dev/shm"), description="A RAM file system for parked models' copies.")
    max_wait_s: float = Field(
        30.0, ge=0, le=86400, description="Aging bound: past it, a request's model is swapped in even if "
        "busy models must drain; below it, the resident model keeps serving its own queue (0: swap at once).")
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long in-flight requests may finish.")
    # ---- hardening: connections (server/connections.py), fan-out, hung engines (server/watchdog.py)
    max_connections: int | None = Field(
        None, ge=1, description="Open connections at most; past it the oldest idle one is closed, or the new one "
        "refused with 503 (default: seven eighths of the open-file limit).")
    header_timeout_s: float = Field(10.0, gt=0, description="Longest a request's headers may take to arrive "
                                    "(and a new connection may stay silent).")
    body_timeout_s: float = Field(120.0, gt=0, description="Longest a request body may take to arrive, all of it.")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="How long an idle keep-alive connection stays open.")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="Cap on a request's headers (431 past it).")
    write_stall_timeout_s: float = Field(
        60.0, gt=0, description="How long a client may leave a response unread before it is dropped.")
    max_request_tokens: int = Field(
        262_144, ge=1, description="Cap on the tokens one request may ask for: prompts x n x max_tokens "
        "(max_tokens counted up to the model's context).")
    first_token_timeout_s: float = Field(
        600.0, gt=0, description="Longest a model may work on its requests without producing a first token "
        "before its worker is declared hung (504) and restarted.")
    inter_token_timeout_s: float = Field(
        120.0, gt=0, description="Longest a generating model may go without producing a token before its "
        "worker is declared hung (504) and restarted.")
    worker_heartbeat_timeout_s: float = Field(
        20.0, gt=0, description="A worker not heard from for this long (stopped, wedged) is killed and restarted.")
    public_base_url: str | None = Field(
        None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Base URL for links the server hands out (image URLs), e.g. https://ai.example.com "
        "(default: the address the request arrived on).")
    log_level: str = Field("info", description="Log level.")

    @field_validator("api_keys", "cors_origins", "allowed_hosts", "model_dirs", "image_fetch_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @property
    def binds_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
