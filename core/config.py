"""The service's one configuration, validated once at start-up.

Sources, later ones winning: defaults below, the YAML file (`CLASSGUARD_CONFIG`, default
`config/classguard.yaml`), then environment variables `CLASSGUARD_<FIELD>`, nested with
`__`, e.g. `CLASSGUARD_LIMITS__MAX_UPLOAD_BYTES=1000000` or `CLASSGUARD_DEVICE=cpu`.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from core.keys import pair_name

DEFAULT_CONFIG = Path("config/classguard.yaml")
MIN_TOKEN_LENGTH = 16  # bearer tokens: shorter ones (an empty one above all) are refused at start-up
MAX_SUBGROUPS = 64  # metric label values for `subgroup`: a hard budget, checked at start-up
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VALUE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(Strict):
    primary: str = Field("classguard-baseline:latest", description="model that answers by default")
    others: list[str] = Field(default_factory=lambda: ["classguard-retrained:latest"],
                              description="models loaded beside it, for routing and shadowing")

    def tags(self) -> list[str]:
        return [self.primary, *[t for t in self.others if t != self.primary]]


class AttributeConfig(Strict):
    values: list[str] = Field(min_length=1, description="allowed values; anything else becomes `other`")
    derive: str | None = Field(None, description="`module:function` inferring the value from the image")
    prefer: Literal["client", "derived"] = Field(
        "derived", description="which wins when the client sends a value and a deriver gives one: `derived` "
        "(the service vouches for the value guardrails and monitors act on) or `client` (trust the client)")

    @field_validator("values")
    @classmethod
    def _values(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not _VALUE.match(v) or v == "other"]
        if bad:
            raise ValueError(f"values must match {_VALUE.pattern} and not be 'other': {bad}")
        return values


class SubgroupsConfig(Strict):
    attributes: dict[str, AttributeConfig] = Field(
        default_factory=dict,
        description="subgroup attributes by name (e.g. `capture`), each with its allowed values; every "
                    "combination, plus `other` per attribute, becomes a `subgroup` label value, at most "
                    f"{MAX_SUBGROUPS} in all. Empty: one subgroup")

    @model_validator(mode="after")
    def _budget(self) -> "SubgroupsConfig":
        bad = [n for n in self.attributes if not _NAME.match(n)]
        if bad:
            raise ValueError(f"attribute names must match {_NAME.pattern}: {bad}")
        combos = math.prod(len(a.values) + 1 for a in self.attributes.values())
        if combos > MAX_SUBGROUPS:
            raise ValueError(f"{combos} subgroup combinations exceed the label budget of {MAX_SUBGROUPS}")
        return self


class LimitsConfig(Strict):
    max_upload_bytes: int = Field(10_000_000, ge=1_000,
                                  description="whole request body; a larger one is refused with a 413")
    max_image_pixels: int = Field(40_000_000, ge=1,
                                  description="width x height of one image, read from its header before "
                                              "decoding (a decompression-bomb guard); more is a 413")
    max_image_side: int = Field(10_000, ge=1, description="width or height of one image, read from its header; "
                                                          "more is a 413")
    max_decoded_bytes: int = Field(256_000_000, ge=1_000_000,
                                   description="memory decoding the images being prepared may take at once in a "
                                               "worker (pixels as stored, times the decoder's copies); an image "
                                               "that alone needs more is refused (413)")
    max_batch_images: int = Field(256, ge=1, description="images in one batch request (files or the rows of one "
                                                         "array upload); more is a 413")
    max_context_bytes: int = Field(4_096, ge=2, description="one image's `context` field (the JSON of its "
                                                            "subgroup attributes); larger is a 400")
    max_header_bytes: int = Field(32_768, ge=1_024, le=1_048_576,
                                  description="request line and headers; more is a 431 and the connection closes")
    header_timeout_seconds: float = Field(10.0, gt=0.0, le=300.0,
                                          description="time to send the request line and headers; then a 408 "
                                                      "and the connection closes")
    max_admin_body_bytes: int = Field(65_536, ge=1_024, description="body of an admin request (a guardrail swap)")
    max_feedback_items: int = Field(1_000, ge=1, le=100_000, description="labels in one POST /feedback")
    max_feedback_body_bytes: int = Field(1_000_000, ge=1_024, description="body of one POST /feedback")
    request_timeout_seconds: float = Field(60.0, gt=0.0, le=3_600.0,
                                           description="a request not answered by then: 408 if its body was "
                                                       "still arriving, else 504")


class BatchingConfig(Strict):
    max_batch_size: int = Field(64, ge=1, description="images per forward pass")
    max_wait_ms: float = Field(0.0, ge=0.0, le=100.0,
                            description="how long the first queued image waits for company")


class ConfusionPairConfig(Strict):
    source: str = Field(description="the true class the model confuses")
    target: str = Field(description="the class it answers instead")
    margin: float = Field(0.3, gt=0.0, le=1.0, description="fires when target leads source by less than this")
    subgroups: list[str] | None = Field(None, description="subgroup keys to watch (default: all)")

    @property
    def name(self) -> str:
        return pair_name(self.source, self.target)


class MonitorsConfig(Strict):
    enabled: bool = Field(True, description="monitor predictions (scores, alarms, drift reports); off: "
                                            "nothing is queued or computed for them")
    bucket_seconds: float = Field(1.0, gt=0.0, le=60.0, description="granularity of windows and sequential tests")
    window_seconds: float = Field(300.0, gt=0.0, le=86_400.0,
                                  description="span the scores and alarms cover (at least bucket_seconds)")
    min_samples: int = Field(100, ge=1, description="no alarm on fewer events in the window")
    cusum_threshold: float = Field(20.0, gt=0.0, description="CUSUM log-likelihood level that raises an alarm "
                                                                   "(20: no false alarm in 400,000 stationary events)")
    rate_ratio: float = Field(3.0, gt=1.0, description="the rise (odds ratio) sequential tests look for")
    rate_floor: float = Field(0.005, gt=0.0, lt=0.5, description="smallest reference rate a test assumes")
    js_threshold: float = Field(0.2, gt=0.0, le=1.0, description="Jensen-Shannon distance that raises an alarm")
    recompute_seconds: float = Field(5.0, gt=0.0, le=300.0,
                                     description="how often each worker shares its window state, merges every "
                                                 "worker's (in a fleet, every replica's) and publishes the scores")
    queue_size: int = Field(20_000, ge=1, description="events waiting for the monitors; more are dropped, counted")
    state_dir: Path | None = Field(None, description="where workers share window state (default: per start)")
    report_events: int = Field(5_000, ge=0, le=200_000, description="latest events kept per worker for drift reports")
    regions: bool = Field(True, description="region monitors on the primary model's embedding, when its profile "
                                            "has a codebook (a model without `embed` is served without them): the "
                                            "log's region column, guardrail `regions` conditions and "
                                            "GET /admin/regions")
    known_confusions: list[ConfusionPairConfig] = Field(
        default_factory=list,
        description="pairs of classes the model is known to confuse; each is watched by a detector whose flag "
                    "guardrails (confusion_guard, route `flags`) and alerts can act on; at most 62")

    @model_validator(mode="after")
    def _window(self) -> "MonitorsConfig":
        if self.window_seconds < self.bucket_seconds:
            raise ValueError("window_seconds must be at least bucket_seconds")
        if len(self.known_confusions) > 62:
            raise ValueError("at most 62 known-confusion pairs")
        return self


class GuardrailsConfig(Strict):
    profiles_path: Path = Field(Path("config/guardrails.yaml"), description="YAML of named guardrail chains")
    active: str | None = Field(None, description="profile at start-up (default: the file's `active`)")
    audit_log: Path = Field(Path("var/guardrail-audit.jsonl"),
                            description="one JSON line per chain change; a fleet keeps its audit rows in PostgreSQL "
                                        "instead")
    sync_seconds: float = Field(0.5, gt=0.0, le=10.0, description="how often workers pick up a swapped chain")
    shadow_max_in_flight: int = Field(256, ge=1, description="shadow runs waiting at once; more are skipped, counted")
    shadow_wait_ms: float = Field(50.0, ge=0.0, le=5000.0,
                                  description="shadow inputs wait this long to share one forward pass (off the response path)")
    automation_path: Path = Field(Path("config/automation.yaml"),
                                  description="YAML of automatic actions on alerts (POST /admin/alerts); a missing "
                                              "file, or `enabled: false` in it, turns them off")


class LogConfig(Strict):
    enabled: bool = Field(True, description="write predictions to the log (needed by feedback, replay and the "
                                            "`classguard log` commands); off: nothing is written")
    path: Path = Field(Path("var/predictions.sqlite"), description="SQLite file (WAL mode); unused in fleet mode")
    mode: Literal["all", "sampled", "flagged"] = Field("all", description="which unflagged predictions to keep")
    sample_share: float = Field(0.1, ge=0.0, le=1.0, description="with mode=sampled: share of unflagged ones")
    store_image_hash: bool = Field(False, description="SHA-256 of each upload (never the image itself)")
    retention_days: float = Field(7.0, gt=0.0, description="rows older than this are deleted")
    max_rows: int = Field(1_000_000, ge=1, description="the oldest rows beyond this are deleted")
    retention_check_seconds: float = Field(30.0, gt=0.0, description="how often retention_days and max_rows are "
                                                                     "enforced")
    flush_seconds: float = Field(0.5, gt=0.0, le=60.0, description="how often queued rows are written")
    busy_timeout_seconds: float = Field(5.0, gt=0.0, le=60.0, description="wait for a locked database, then count a failure")
    queue_size: int = Field(50_000, ge=1, description="rows waiting to be written; more are dropped, counted")
    hold_feedback_seconds: float = Field(120.0, ge=0.0, le=86_400.0,
                                         description="a label whose answer is not written yet is held this long "
                                                     "(POST /feedback answers 202 `held`; more than max_held_feedback "
                                                     "waiting: 503 `hold_full`); 0, or a log.mode other than `all`, "
                                                     "turns holding off")
    max_held_feedback: int = Field(10_000, ge=0, description="labels held at once; more are refused, counted")


class CaptureConfig(Strict):
    """Which answers keep their input image, and within what. Images users send may be personal
    data: capture is off unless an operator turns it on, every kept image can be erased, and
    reading one needs the admin token (docs: "Captured inputs")."""

    policy: Literal["off", "flagged", "stratified", "all"] = Field(
        "off", description="which answers keep their input: `flagged` (a monitor flag, a guardrail action, an "
        "abstention, the `novel` region), `stratified` (any answer, up to `per_stratum` per model x subgroup x "
        "region per `stratum_seconds`, so a group at 2% of traffic is kept as well as one at 60%), `all`; only "
        "answers the prediction log keeps (log.mode)")
    keep: Literal["originals", "thumbnails"] = Field(
        "originals", description="`thumbnails`: keep only a small PNG of each input, never the upload itself")
    per_stratum: int = Field(200, ge=1, le=1_000_000, description="inputs kept per model x subgroup x region in "
                             "each `stratum_seconds` (flagged and stratified policies; per worker process)")
    stratum_seconds: float = Field(3_600.0, ge=1.0, le=604_800.0,
                                   description="the period `per_stratum` counts over")
    max_original_bytes: int = Field(1_000_000, ge=1_024, le=100_000_000,
                                    description="a larger upload (or one not PNG, JPEG, WebP, GIF, BMP or TIFF) "
                                    "keeps only its thumbnail")
    thumbnail_side: int = Field(64, ge=8, le=512, description="longest side of a thumbnail, in pixels")
    max_bytes: int = Field(256_000_000, ge=1_000_000, description="bytes of captured inputs in the store in all; "
                           "the oldest are evicted beyond it")
    queue_bytes: int = Field(32_000_000, ge=100_000, description="bytes of inputs waiting to be written per "
                             "worker; more are dropped, counted")


class FleetConfig(Strict):
    """Fleet mode: replicas share one PostgreSQL for the log, feedback, the guardrail chain and
    the monitor windows. Unset `database_url` keeps the embedded single-host default (SQLite)."""

    database_url: SecretStr | None = Field(None, description="postgresql:// URL; set, every replica shares it")
    replica: str | None = Field(None, description="this replica's name: the log's `replica` column, audit rows "
                                                    "and the connections' application_name (default: the host name)")
    connect_timeout_seconds: float = Field(3.0, gt=0.0, le=60.0,
                                           description="give up connecting after this; also sets the TCP keepalives "
                                                       "that find a silent database")
    statement_timeout_seconds: float = Field(5.0, gt=0.0, le=300.0,
                                             description="cancel a store statement after this; with "
                                                         "connect_timeout_seconds it bounds an unacknowledged send")
    startup_wait_seconds: float = Field(60.0, ge=0.0, le=3_600.0,
                                        description="a replica starting while the database is away, or before "
                                                    "its schema is migrated, waits this long")
    # Off: replicas connect as a role without CREATE on the schema and only check its version;
    # `classguard db migrate` (the owner role) creates and upgrades it. On: a replica whose URL
    # names the owner role migrates at start-up (one host, demos, trials).
    migrate: bool = Field(False, description="create or upgrade the schema at start-up (needs the owner role); off: "
                                             "run `classguard db migrate` before the replicas start")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None:
            return None
        if not url.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("fleet.database_url must be a postgresql:// URL (not shown: it may hold a password)")
        try:
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(url.get_secret_value())
        except ImportError:
            pass  # the driver's absence is reported where the store opens
        except Exception:  # the driver's message quotes the offending part, password included
            raise ValueError("fleet.database_url is not a valid PostgreSQL URL (not shown: it may hold a "
                             "password); percent-encode special characters in the user and password") from None
        return url

    @field_validator("replica")
    @classmethod
    def _replica(cls, name: str | None) -> str | None:
        if name is not None and not _VALUE.match(name):
            raise ValueError(f"fleet.replica must match {_VALUE.pattern}")
        return name

    @property
    def enabled(self) -> bool:
        return self.database_url is not None

    def replica_name(self) -> str:
        import socket

        name = self.replica or socket.gethostname()
        return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:32] or "replica"


class Settings(BaseSettings):
    # hide_input_in_errors: a refused token or database URL must not be echoed into a log
    model_config = SettingsConfigDict(env_prefix="CLASSGUARD_", env_nested_delimiter="__", extra="forbid",
                                      frozen=True, hide_input_in_errors=True)

    models: ModelsConfig = ModelsConfig()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models run: `auto` takes CUDA when "
                                                   "available, else the CPU; `cuda` without a GPU fails at start-up")
    half_precision: bool = Field(False, description="float16 weights on CUDA")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per worker on CPU")
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes on this host, each with its own "
                                                     "copy of the models")
    top_k: int = Field(3, ge=1, le=20, description="labels with their probabilities in each answer")
    access_log: bool = Field(False, description="BentoML's per-request INFO log (costs throughput)")
    admin_token: SecretStr | None = Field(None, description="bearer token of the /admin routes, at least "
                                                            f"{MIN_TOKEN_LENGTH} characters; unset: they answer 404")
    feedback_token: SecretStr | None = Field(None, description="bearer token of POST /feedback, at least "
                                                               f"{MIN_TOKEN_LENGTH} characters; unset: it answers 404")
    alerts_token: SecretStr | None = Field(None, description="bearer token of POST /admin/alerts (Alertmanager's "
                                                             f"webhook), at least {MIN_TOKEN_LENGTH} characters; unset: "
                                                             "it answers 404")
    limits: LimitsConfig = LimitsConfig()
    batching: BatchingConfig = BatchingConfig()
    subgroups: SubgroupsConfig = SubgroupsConfig()
    monitors: MonitorsConfig = MonitorsConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    log: LogConfig = LogConfig()
    capture: CaptureConfig = CaptureConfig()
    fleet: FleetConfig = FleetConfig()

    @model_validator(mode="after")
    def _capture_needs_the_log(self) -> "Settings":
        # a captured input is kept beside its log row (retention, erasure and export follow the row)
        if self.capture.policy != "off" and not self.log.enabled:
            raise ValueError("capture.policy needs the prediction log (log.enabled: true)")
        return self

    @field_validator("admin_token", "feedback_token", "alerts_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None, info) -> SecretStr | None:
        """A weak token would open a route (an empty one matched `Authorization: Bearer` with
        nothing after it): refuse it at start-up rather than guess what was meant."""
        if token is None:
            return None
        value = token.get_secret_value()
        variable = f"CLASSGUARD_{info.field_name.upper()}"
        if len(value) < MIN_TOKEN_LENGTH or value != value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"{variable} must be at least {MIN_TOKEN_LENGTH} characters without whitespace "
                             f"(got {len(value)}); unset it to turn its routes off, or generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return token

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("CLASSGUARD_CONFIG", DEFAULT_CONFIG))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.exists() or "CLASSGUARD_CONFIG" in os.environ:
            if not path.exists():
                raise FileNotFoundError(f"CLASSGUARD_CONFIG names {path}, which does not exist")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return Settings()
