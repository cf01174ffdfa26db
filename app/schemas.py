"""Request and response schemas; `Field` bounds make bad input a clear 422, never a 500."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.kinds import EMULATOR, IMAGE
from models.registry import DEFAULT_MODEL
from training.presets import PRESETS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JOB_ID_PATTERN = r"^[a-f0-9]{32}$"
MAX_SEED = 2**63 - 1
DEFAULT_IMAGE_MODEL = DEFAULT_MODEL[IMAGE]  # what GET /generate serves without `model`
DEFAULT_EMULATOR_MODEL = DEFAULT_MODEL[EMULATOR]  # what POST /emulate serves without `model`
MAX_QUERY_N = 1024  # the schema's bound; COSMOGAN_MAX_GENERATE_N is the server's


class Problem(BaseModel):
    row: int | None = Field(
        default=None, description="The row's position in the catalog, counted from 0."
    )
    column: str | None = None
    message: str


class ErrorOut(BaseModel):
    detail: str
    problems: list[Problem] | None = None


class TrainRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"preset": "balrog", "overrides": {"dry_run": True}},
                {"preset": "balrog-flow", "model": "my-emulator", "overrides": {"epochs": 5}},
                {"preset": "nebula", "overrides": {"epochs": 5}, "activate": True},
            ]
        },
    )

    # documented as an enum; an unknown name still gets the presets' own 422 message
    preset: str = Field(
        min_length=1,
        max_length=64,
        description="The training recipe; its settings are the defaults.",
        json_schema_extra={"enum": sorted(PRESETS)},
    )
    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Dataset path inside COSMOGAN_HOME/data (relative to it or absolute); "
        "default: the preset's dataset there. Not needed with dry_run.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, max_length=64, description="Preset settings to change."
    )
    model: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The model name the trained version is registered under (what `GET "
        "/generate?model=` and `POST /emulate` `model` call). Default: `nebula` for an image "
        "preset, `balrog` for an emulator preset, so that activating the version changes "
        "what the default calls answer. The network kind is recorded on the version.",
    )
    activate: bool = Field(default=False, description="Serve the model once the job succeeds.")
    resume: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="Id of a cancelled or failed job to continue in its run folder.",
    )


class TrainAccepted(BaseModel):
    job_id: str
    state: str
    url: str


class JobProgress(BaseModel):
    """A job's latest progress: the fields of `training.progress.RECORD_FIELDS`, and metrics."""

    epoch: int = Field(
        default=0, description="Epochs completed (equals `epochs` once the run has finished)."
    )
    epochs: int | None = Field(default=None, description="Epochs the run will complete.")
    step: int = Field(default=0, description="Generator steps done.")
    total_steps: int | None = Field(default=None, description="Generator steps the run will do.")
    losses: dict[str, Any] = Field(default={}, description="Losses of the latest step.")
    eta_s: float | None = Field(default=None, description="Seconds left, estimated.")
    metrics: dict[str, Any] = {}


class JobOut(JobProgress):
    job_id: str
    preset: str
    state: str
    data: str | None = None
    overrides: dict[str, Any] = {}
    activate: bool = False
    samples: list[str] = Field(default=[], description="URLs of the sample grids so far.")
    error: str | None = None
    model: str | None = Field(default=None, description="`name@version` once registered.")
    results: dict[str, Any] | None = Field(
        default=None,
        description="The evaluation as one table: figure, model, Gaussian baseline, floor, "
        "ratio, verdict (lower is better; see `GET /models`), with `floor_source` (the "
        "second simulator draw the floor comes from) or `floor_missing` (why there is "
        "none) and `us_per_object`.",
    )
    target: str | None = Field(default=None, description="The model name it trains into.")
    cancel_requested: bool = False
    attempts: int = 0
    stalled: bool = Field(default=False, description="Running, but no heartbeat for a while.")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    heartbeat_at: float | None = None
    events: str


class JobList(BaseModel):
    jobs: list[JobOut]


class ActivateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"version": "default"}]}
    )

    version: str = Field(pattern=NAME_PATTERN, description="A registered version of the model.")


class VersionPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "baseline"}]}
    )

    note: str = Field(
        max_length=500, description="Free text shown beside the version; '' removes it."
    )


class EmulateOptions(BaseModel):
    """Everything of an `/emulate` JSON body but its rows (the query string may set these too)."""

    model_config = ConfigDict(extra="forbid")

    # strict: JSON `true` is not the number 1
    samples: int | None = Field(
        default=None, ge=1, strict=True, description="Realizations per row (1)."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        strict=True,
        description="For reproducible output; random if unset.",
    )
    model: str | None = Field(
        default=None, pattern=NAME_PATTERN, description=f"Default {DEFAULT_EMULATOR_MODEL!r}."
    )
    version: str | None = Field(default=None, pattern=NAME_PATTERN)


class EmulateRequest(EmulateOptions):
    """The JSON body of `POST /emulate` (query parameters, when given, take precedence)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rows": [
                        {
                            "true_mag_r": 22.1,
                            "true_mag_i": 21.6,
                            "true_mag_z": 21.3,
                            "sky_sigma_r": 4.1,
                            "sky_sigma_i": 7.1,
                            "sky_sigma_z": 13.5,
                            "psf_fwhm_r": 0.95,
                            "psf_fwhm_i": 0.88,
                            "psf_fwhm_z": 0.84,
                        }
                    ],
                    "samples": 3,
                    "seed": 7,
                }
            ]
        },
    )

    rows: list[dict[str, Any]] = Field(
        min_length=1,
        description="Objects with true_mag_{r,i,z}, sky_sigma_{r,i,z}, psf_fwhm_{r,i,z} "
        "(DES Balrog aliases accepted); other keys are passed through.",
    )
