"""The settings of the services around the pipeline: the API, its authentication, jobs and
CloudWatch. Sections of :class:`healthsync.config.Settings`, which is where to read them from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class ApiSettings(BaseModel):
    """The REST API."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # HTTPS with the `api` certificate from `tls.dir` (TLS 1.3 unless tls.min_version).
    tls_enabled: bool = True
    # The URL clients reach the API at (scheme://host[:port]); links in answers are built
    # from it, never from the request's Host header. Default: the listening address.
    base_url: str | None = None
    # Larger request bodies are answered 413 before anything reads them.
    max_body_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    # Addresses of reverse proxies whose X-Forwarded-For is recorded in the audit (next to
    # the peer address, never instead of it). Empty: forwarding headers are ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    # /v1/stream: a comment line this often keeps proxies from closing a quiet stream.
    stream_heartbeat_s: float = Field(15.0, gt=0, le=300)
    # Events queued for one slow client before it is cut off (it resumes with Last-Event-ID).
    stream_client_buffer: int = Field(2000, ge=10, le=100_000)


ASYMMETRIC_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class AuthSettings(BaseModel):
    """Who may use the API, and where the audit of patient-data reads goes.

    The API refuses to start without a way to authenticate (an API keys file or
    JWT verification) and without an audit sink: neither can be switched off.
    """

    # JWT bearer tokens from an identity provider: issuer, audience and its public keys
    # (a PEM file, a JWKS file or a JWKS URL). All of exp, iss, aud and sub are required.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # Asymmetric algorithms only: a shared secret would let every verifier mint tokens.
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    jwt_leeway_s: float = Field(30.0, ge=0, le=300)
    # The header `typ`s accepted (RFC 9068 access tokens), so that an OpenID Connect ID
    # token issued for the same audience is not taken as an access token.
    jwt_types: list[str] = Field(
        default_factory=lambda: ["at+jwt", "application/at+jwt"], min_length=1
    )
    # The longest lifetime a token may have (exp - iat, or exp - now): a stolen
    # long-lived token would outlive any revocation.
    jwt_max_lifetime_s: float = Field(3600.0, gt=0, le=86400)
    # API keys for services, stored hashed (see `healthsync apikey`); the file must be 0600.
    api_keys_file: Path | None = None
    # Audit sinks: an append-only JSON lines file and/or the Redis stream {prefix}:audit.
    audit_log_file: Path | None = None
    audit_redis: bool = True

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        refused = [a for a in algorithms if a not in ASYMMETRIC_JWT_ALGORITHMS]
        if refused:
            raise ValueError(
                f"{', '.join(refused)} not allowed; use public-key algorithms: "
                + ", ".join(sorted(ASYMMETRIC_JWT_ALGORITHMS))
            )
        return algorithms

    @property
    def jwt_enabled(self) -> bool:
        return self.jwt_issuer is not None


JOB_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"


class JobsSettings(BaseModel):
    """Compute jobs: when they run, where, and where their output goes."""

    # "local": a subprocess on this machine; "aws": the scheduler invokes the Lambda
    # function, which launches an EC2 worker from a launch template.
    runner: Literal["local", "aws"] = "local"
    # Job name -> cron expression (croniter, UTC), e.g. {"trends" = "5 * * * *"}.
    schedule: dict[str, str] = Field(default_factory=dict)
    # The store job outputs go to, under <prefix>/jobs/<name>/<run id>/: a local
    # directory (file://, or a plain path) or s3://bucket/prefix. The archive's store.
    output_url: str = "file://run/archive"
    # A local run is killed after this long; the lock that keeps a job from running
    # twice expires a little later, so a crashed run never blocks the job for good.
    timeout_s: float = Field(3600.0, gt=0)
    lock_margin_s: float = Field(60.0, ge=0)
    # Where the local runner writes each run's output (stdout and stderr).
    log_dir: Path = Path("run/logs/jobs")
    # How often the scheduler looks at the clock.
    tick_s: float = Field(1.0, gt=0)
    # The period a run covers when none is given: the last `default_period_s` seconds.
    default_period_s: float = Field(24 * 3600.0, gt=0)
    # The aws runner: the Lambda function that launches workers, and its region.
    lambda_function: str = "healthsync-jobs-launcher"
    aws_region: str | None = None
    # Read by the Lambda handler (healthsync.aws.lambda_jobs) from its environment:
    # the EC2 launch template's name, and the Redis URL where run records live.
    launch_template: str | None = None
    state_url: str | None = None

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, schedule: dict[str, str]) -> dict[str, str]:
        from croniter import CroniterError, croniter

        for name, expression in schedule.items():
            if not re.fullmatch(JOB_NAME_PATTERN, name):
                raise ValueError(f"job name {name!r} must match {JOB_NAME_PATTERN}")
            if not croniter.is_valid(expression):
                raise ValueError(f"job {name}: {expression!r} is not a cron expression")
            try:  # 31 February is valid, and never comes
                croniter(expression).get_next(float)
            except CroniterError:
                raise ValueError(f"job {name}: {expression!r} never names a date") from None
        return schedule

    @property
    def lock_ttl_s(self) -> float:
        return self.timeout_s + self.lock_margin_s


class CloudWatchSettings(BaseModel):
    """Metrics and logs to Amazon CloudWatch; off unless enabled."""

    enabled: bool = False
    interval_s: float = Field(60.0, gt=0)
    namespace: str = "HealthSync"
    # "api": PutMetricData and CloudWatch Logs PutLogEvents from the exporter;
    # "emf": Embedded Metric Format lines on stdout, for the CloudWatch agent.
    mode: Literal["api", "emf"] = "api"
    # Log groups are <log_group_prefix>/<stage>.
    log_group_prefix: str = "/healthsync"
    # Metric batches waiting to be sent; beyond this the oldest are dropped (and counted).
    queue_size: int = Field(1000, ge=1)
    # The stages' log files (<stage>.log) to ship; None: the parent of jobs.log_dir.
    log_dir: Path | None = None
    ship_logs: bool = True
    aws_region: str | None = None
