"""The one settings object shared by the API, the worker and the command line."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_KEY_LENGTH = 16
# Keys that appear in docs and examples everywhere: never a production secret.
WELL_KNOWN_KEYS = frozenset(
    [
        "dev",
        "changeme",
        "change-me",
        "secret",
        "password",
        "admin",
        "test",
        "example",
        "apikey",
        "api-key",
        "api_key",
        "token",
        "default",
        "cosmogan",
        "letmein",
        "123456",
    ]
)


def weak_key_reason(key: str) -> str | None:
    """Why `key` is not fit for production, or None."""
    if key.strip().lower() in WELL_KNOWN_KEYS or len(set(key)) <= 2:
        return "is a well-known placeholder"
    if len(key) < MIN_KEY_LENGTH:
        return f"is shorter than {MIN_KEY_LENGTH} characters"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything configurable, read from `COSMOGAN_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="COSMOGAN_", extra="ignore")

    mode: Literal["development", "production"] = "development"
    home: Path = Field(default=Path("var"), description="Storage root: runs/, registry/, data/.")
    redis_url: str | None = Field(
        default=None, description="Broker and result store; unset means `serve` embeds one."
    )
    api_key: str | None = Field(
        default=None,
        description="Bearer token for mutating routes; required in production, "
        "`dev` in development when unset.",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Password of the Redis that `serve` embeds (`requirepass`); for an external "
        "Redis, put it in COSMOGAN_REDIS_URL (redis://:PASSWORD@host:6379/0).",
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    host: str = "127.0.0.1"
    port: int = 8000

    # request bounds
    max_generate_n: int = Field(default=64, ge=1, le=1024)
    max_emulate_rows: int = Field(default=10_000, ge=1)
    max_emulate_samples: int = Field(default=16, ge=1)
    max_emulate_columns: int = Field(
        default=1000, ge=9, description="Columns a POST /emulate body may have (any format)."
    )
    max_emulate_cells: int = Field(
        default=4_000_000,
        ge=1000,
        description="Cells a POST /emulate response may hold: rows × samples × columns "
        "(the body's plus the emulated ones); bounds the memory a request can take.",
    )
    emulate_max_file_rows: int = Field(
        default=20_000_000,
        ge=1,
        description="Output rows (rows × samples) of a POST /emulate/jobs result above which "
        "it is a Parquet dataset (one file per chunk) instead of one file; CSV and FITS "
        "outputs above it are refused.",
    )
    max_emulate_json_bytes: int = Field(
        default=8 * 2**20,
        ge=1024,
        description="Largest JSON body of POST /emulate (a JSON body is parsed whole; "
        "CSV, Parquet and FITS bodies may be up to 64 MiB).",
    )

    job_floor_max_rows: int = Field(
        default=50_000,
        ge=0,
        description="Evaluated rows of an emulator job up to which its evaluation simulates a "
        "second GalSim draw of them (the floor; about 5 ms an object on one core); above it "
        "the result has no floor and says why. The analytic simulator has no limit.",
    )

    # inference batching and timeouts
    batch_max_size: int = Field(default=64, ge=1, description="Max requests per coalesced batch.")
    data_processes: int | None = Field(
        default=None, ge=1, description="Processes of a `data` worker (default: one per core)."
    )
    inference_timeout_s: float = Field(default=60.0, gt=0)
    inference_work_per_s: float = Field(
        default=5.0,
        gt=0,
        description="Inference work units (images, or thousands of emulated rows) served a "
        "second, assumed for a task until its worker has measured it: requests the queue "
        "cannot serve within 70% of inference_timeout_s are refused at once with 503 and "
        "Retry-After.",
    )
    redis_max_connections: int = Field(
        default=512,
        ge=8,
        description="Redis connections per API process; requests beyond wait for one "
        "(up to redis_pool_timeout_s) instead of failing.",
    )
    redis_pool_timeout_s: float = Field(default=10.0, gt=0)
    max_queued_work: int = Field(
        default=1024,
        ge=1,
        description="Queued inference work (images, or thousands of emulated rows) beyond "
        "which requests are refused with 503 and Retry-After.",
    )

    # what anonymous callers can hold
    max_event_streams: int = Field(
        default=64, ge=1, description="Concurrent server-sent-event streams in all."
    )
    max_event_streams_per_client: int = Field(
        default=4, ge=1, description="Concurrent event streams per API key or address."
    )
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description="Requests a minute per API key or address; unset: off."
    )
    rate_limit_burst: int = Field(default=30, ge=1, description="Requests allowed at once.")
    max_json_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Largest JSON body FastAPI parses (POST /emulate bounds its own).",
    )

    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses (or CIDR ranges) of reverse proxies whose "
        "X-Forwarded-For/-Proto headers are believed; empty: none, the peer address counts.",
    )

    # long jobs: the broker must not redeliver a training job that is still running
    visibility_timeout_s: int = Field(default=7 * 24 * 3600, ge=3600)

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.mode == "production" and not self.api_key:
            raise ValueError("COSMOGAN_API_KEY must be set when COSMOGAN_MODE=production")
        if self.mode == "production" and (why := weak_key_reason(self.api_key or "")):
            raise ValueError(
                f"COSMOGAN_API_KEY {why}: production needs a random key of at least "
                f"{MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 24`)"
            )
        if self.api_key is None:
            self.api_key = "dev"
        return self

    def exposure_warning(self, host: str) -> str | None:
        """A warning when this configuration would serve beyond this machine unsafely."""
        if is_loopback(host) or self.mode == "production":
            return None
        weak = weak_key_reason(self.api_key or "")
        risk = (
            f"anyone who can reach it can train and activate models: the API key {weak}"
            if weak
            else "it is reachable beyond this machine"
        )
        return (
            f"DEVELOPMENT MODE ON A NON-LOOPBACK ADDRESS ({host}): {risk}. Set "
            "COSMOGAN_MODE=production and a strong COSMOGAN_API_KEY, or bind 127.0.0.1."
        )

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
