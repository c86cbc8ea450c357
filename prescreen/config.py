"""Settings of prescreen, read from the environment (prefix ``PRESCREEN_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """All tunables in one place.

    Every field can be set as ``PRESCREEN_<FIELD>`` in the environment or in a ``.env`` file.
    """

    model_config = SettingsConfigDict(env_prefix="PRESCREEN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("../shared/data"), description="Folder of labelled data sets")
    home: Path = Field(Path(".prescreen"), description="State: model store, caches, database")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under home")
    host: str = "127.0.0.1"
    port: int = 3000
    dicom_ae_title: str = Field("PRESCREEN", description="AE title of the DICOM listener")
    dicom_port: int = Field(11112, description="Port of the DICOM listener; 0 turns it off")
    dicom_tls_port: int = Field(
        0, ge=0, description="Port of the DICOM TLS listener (convention 2762; needs PRESCREEN_TLS_CERT/KEY); 0: off"
    )
    dicom_tls_ca: Path | None = Field(
        None, description="CA certificates (PEM) that DICOM TLS destinations (tls:AE@host:port) are checked against"
    )
    dicom_allowed_aes: CommaList = Field(
        default_factory=list, description="Calling AE titles allowed to associate; empty allows all"
    )
    dicom_acse_timeout_seconds: float = Field(
        5.0, gt=0, description="A connection that sends no association request within this is closed"
    )
    dicom_network_timeout_seconds: float = Field(60.0, gt=0, description="An association silent this long is aborted")
    dicom_max_associations: int = Field(64, ge=1, description="Concurrent associations the DICOM listener serves")
    dicom_max_associations_per_address: int = Field(
        16, ge=1, description="Concurrent connections from one address; more are closed, so one host cannot take all"
    )
    group_commit: bool = Field(
        True,
        description="DICOM instances arriving together (several associations, one STOW-RS request) are made durable "
        "together: the blobs synced together, one transaction; each is still acknowledged only once durable",
    )
    study_quiet_seconds: float = Field(10.0, description="A study is complete after this long with no new instance")
    worker_threads: int = Field(1, description="Screening workers in each service process; 0 runs none")
    worker_poll_seconds: float = Field(0.5, description="How often an idle worker looks for work")
    job_lease_seconds: float = Field(300.0, description="A running job whose worker is silent this long is retaken")
    delivery_lease_seconds: float = Field(
        600.0, gt=0, description="A delivery being sent by a process that died is retaken after this long"
    )
    job_max_attempts: int = Field(3, description="Attempts before a job that keeps failing is marked failed")
    sr_destinations: CommaList = Field(
        default_factory=list, description="Where DICOM SR results go by C-STORE, each 'AE@host:port'"
    )
    delivery_max_attempts: int = Field(8, description="Attempts of one delivery before it is given up")
    delivery_backoff_seconds: float = Field(2.0, description="First retry delay; doubles per attempt, capped at 5 min")
    forward_to: CommaList = Field(
        default_factory=list,
        description="Edge node: where complete studies go, in order of preference: central service URLs "
        "(STOW-RS) or AE@host:port (C-STORE), comma-separated; the first that answers its health check is used",
    )
    uplink_probe_seconds: float = Field(
        0.5, gt=0, le=60, description="Edge node with several uplinks: how often each is health-checked"
    )
    uplink_probe_timeout_seconds: float = Field(
        0.8, gt=0, le=60, description="An uplink's health check (GET /readyz or C-ECHO) fails after this long"
    )
    secret_key: SecretStr | None = Field(None, description="Token signing key; default: made once in home/secret.key")
    tls_cert: Path | None = Field(
        None, description="HTTPS certificate (PEM); with PRESCREEN_TLS_KEY the API is HTTPS only"
    )
    tls_key: Path | None = Field(None, description="The private key (PEM) of PRESCREEN_TLS_CERT")
    backup_dir: Path | None = Field(
        None,
        description="Where the service writes scheduled backups (none: no schedule; `prescreen backup` still works)",
    )
    backup_full_days: float = Field(7, gt=0, description="A full backup set this often (weekly)")
    backup_incremental_hours: float = Field(24, gt=0, description="An incremental set this often (daily)")
    backup_keep: int = Field(4, ge=1, description="Full backup chains kept; older chains are deleted")
    scratch_dir: Path | None = Field(
        None,
        description="Where spooled uploads and records being decoded go (plaintext): default /dev/shm (memory) "
        "when it has room for two of the largest uploads, else the system temporary folder (a warning)",
    )
    replica_dir: Path | None = Field(
        None,
        description="Continuous capture between backups, on another disk: every blob and the keyring are written "
        "there before they are acknowledged, and a SQLite database is streamed there by Litestream (none: off)",
    )
    blob_url: str | None = Field(
        None,
        description="Where received files go: none is the folder home/blobs; s3://BUCKET/PREFIX is an S3-compatible "
        "object store (SeaweedFS, MinIO, Ceph RGW, a cloud's S3) shared by every replica of the service",
    )
    s3_endpoint: str | None = Field(None, description="The object store's S3 endpoint, e.g. http://seaweed:8333")
    s3_access_key: str | None = Field(None, description="The object store's access key id")
    s3_secret_key: SecretStr | None = Field(None, description="The object store's secret key")
    s3_region: str = Field("us-east-1", description="The object store's region (most S3-compatible stores ignore it)")
    replica_sync_seconds: float = Field(
        1.0, gt=0, le=60, description="How often Litestream ships the SQLite WAL to PRESCREEN_REPLICA_DIR"
    )
    keyring_store: Literal["home", "database"] = Field(
        "home",
        description="Where the keyring (data keys wrapped by the master key) lives: 'home' (home/keys/keyring.json) "
        "or 'database' (one row of the shared database: replicas of the service on several machines)",
    )
    master_key_file: Path | None = Field(
        None,
        description="The master key (SM4, hex) that wraps every data key; made once if missing. Default "
        "home/keys/master.key; keep it apart from the backups (a restore needs it)",
    )
    token_ttl_minutes: int = Field(480, description="Lifetime of an access token / page session")
    cookie_secure: bool | None = Field(
        None, description="Session cookie Secure flag; default: when the request came over HTTPS (set true behind TLS)"
    )
    locale: Literal["zh_CN", "en"] = Field(
        "zh_CN", description="Language of the pages unless a reader picks another: zh_CN (Simplified Chinese) or en"
    )
    timezone: str = Field(
        "Asia/Shanghai", description="IANA time zone the pages show dates in (the hospital's), e.g. Asia/Shanghai"
    )
    anonymous_permissions: CommaList = Field(
        default_factory=list,
        description="What callers without credentials may do, e.g. 'screen,ingest,studies:read,models:read' for a "
        "trusted lab network (a warning is logged at start); default: nothing",
    )
    mfa: str = Field(
        "login",
        pattern="^(login|step-up)$",
        description="'login': password + TOTP at every sign-in; 'step-up': TOTP only for sensitive operations",
    )
    step_up_minutes: float = Field(5, gt=0, le=60, description="A second factor counts as fresh for this long")
    session_idle_minutes: float = Field(15, gt=0, description="A session idle this long ends")
    password_min_length: int = Field(12, ge=8, description="Shortest password accepted")
    audit_checkpoint_seconds: float = Field(
        60, gt=0, description="How often the audit chain's head is signed (SM2) when it has grown"
    )
    audit_retention_days: int = Field(
        180, ge=180, description="Audit records are kept at least this long (the law asks six months)"
    )
    audit_syslog: str | None = Field(
        None, description="host:port that audit records are streamed to as RFC 5424 syslog over UDP"
    )
    rules_path: Path | None = Field(None, description="Routing rules YAML; default: the shipped rules")
    sla_stat_minutes: float = Field(30, description="Report target of a stat item")
    sla_urgent_minutes: float = Field(120, description="Report target of an urgent item")
    sla_routine_minutes: float = Field(240, description="Report target of a routine item (the 4-hour plan)")
    claim_lease_minutes: float = Field(30, gt=0, description="A claim expires after this; the item returns to the list")
    max_report_chars: int = Field(20000, description="Longest report text accepted (413 above)")
    escalation_webhook: str | None = Field(None, description="URL that escalation events are POSTed to")
    monitoring_window: int = Field(
        200, ge=1, description="In-service figures and score drift (PSI) cover the last this many studies"
    )
    psi_alarm_threshold: float = Field(
        0.25, gt=0, description="A site's score PSI above this (over a full window) raises a drift alarm"
    )
    monitoring_min_labelled: int = Field(
        30, ge=1, description="Labelled studies a figure needs before its upper bound below target raises an alarm"
    )
    monitoring_interval_seconds: float = Field(60.0, gt=0, description="How often monitoring looks for alarms")
    max_upload_bytes: int = Field(200 * 1024 * 1024, description="Largest accepted upload")
    max_image_pixels: int = Field(100_000_000, description="Largest accepted image (all frames)")
    max_image_frames: int = Field(512, description="Most frames of one image study")
    max_instances_per_study: int = Field(
        32, ge=1, description="Most instances screened per series; beyond it an evenly spaced sample, said so"
    )
    holter_min_seconds: float = Field(
        600.0,
        gt=0,
        description="An ECG record at least this long is an ambulatory (Holter) recording and goes to the "
        "holter task; shorter strips go to ecg-rhythm",
    )
    max_screen_holter_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest ambulatory record /v1/screen analyses in the request (413 above); longer ones go to "
        "the queue through /v1/studies",
    )
    max_holter_bytes: int = Field(
        400 * 1024 * 1024, gt=0, description="Largest ambulatory record (all its signal files) the holter task reads"
    )
    max_screen_record_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest record /v1/screen screens in the request (413 above): long recordings (Holter) go "
        "to the queue through /v1/studies",
    )
    max_concurrent_screens: int = Field(
        2, ge=1, description="Studies /v1/screen decodes and screens at once in one process; others wait"
    )
    screen_wait_seconds: float = Field(
        10.0, ge=0, description="How long a /v1/screen request waits for a free slot before a 503 with Retry-After"
    )
    max_decoded_bytes: int = Field(
        256 * 1024 * 1024,
        description="Largest image working size (rows x columns x frames x samples x 4 bytes, as 32-bit floats), "
        "checked from the header before decoding (413 above)",
    )
    explanation_ttl_hours: float = Field(24.0, description="Explanation overlays are deleted after this")
    target_metric: str = "accuracy"
    target_threshold: float = 0.95
    bootstrap_resamples: int = 1000
    onnx_threads: int = 2

    @field_validator("dicom_allowed_aes", "sr_destinations", "anonymous_permissions", "forward_to", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """``A,B`` in the environment is the list ``[A, B]``."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """A zone the tz database knows (``Asia/Shanghai``, ``UTC``); anything else is refused at start."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}: give an IANA name such as 'Asia/Shanghai'") from exc
        return value

    @property
    def bentoml_home(self) -> Path:
        """BentoML's home (model store) lives under the prescreen home."""
        return self.home / "bentoml"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; also points BentoML at its home and turns tracking off."""
    settings = Settings()
    settings.home = settings.home.expanduser().resolve()
    settings.data_dir = settings.data_dir.expanduser().resolve()
    configure_bentoml_env(settings)
    return settings


def configure_bentoml_env(settings: Settings) -> None:
    """Set BentoML's environment before it is imported: project-local home, no tracking."""
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ["BENTOML_HOME"] = str(settings.bentoml_home)
