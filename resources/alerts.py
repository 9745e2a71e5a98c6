"""Alert delivery and the failure log (issue 5 item 4; seeds 000 and 003).

Failures go to a webhook as JSON (MARKETPIPE_ALERT_WEBHOOK_URL) and by email through SMTP
(MARKETPIPE_SMTP_HOST/PORT, MARKETPIPE_ALERT_EMAIL_FROM/TO, optionally MARKETPIPE_SMTP_USER and
MARKETPIPE_SMTP_PASSWORD, MARKETPIPE_SMTP_STARTTLS=1); successful ingestion to
MARKETPIPE_NOTIFY_URL. Each channel is tried ALERT_ATTEMPTS times with a doubling pause
(MARKETPIPE_ALERT_RETRY_SECONDS, default 1 s) on transient errors only, then reported as
undelivered. Settings are read from the environment, never from Dagster config, so webhook
tokens and the SMTP password never show in the UI; every text that leaves this module (payloads,
mails, log lines, errors) is scrubbed of them and of the providers' keys.

The failure log is one parquet file per alert,
`<lake>/failure_log/date=<YYYY-MM-DD>/<run_id>.parquet` (the failed run's end date, UTC), written
atomically by the lake; the file name is the alert's identity, so the sensor can tell an alert
it already handled.
"""

from __future__ import annotations

import datetime as dt
import os
import smtplib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from urllib.parse import urlsplit

import httpx
import polars as pl

from checks.errors import ConfigurationError
from checks.schemas import make_schema
from resources.lake import LakeResource
from resources.providers.http import Redactor, seconds_from_env

ALERT_ATTEMPTS = 3
TIMEOUT = 10.0  # seconds per webhook POST or SMTP conversation
FAILURE_LOG = "failure_log"
# Environment variables whose values are secrets wherever they turn up (provider keys, AWS).
_SECRET_SUFFIXES = ("_KEY", "_SECRET", "_TOKEN", "_PASSWORD")


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: str | None = field(default=None, repr=False)
    notify_url: str | None = field(default=None, repr=False)
    smtp_host: str | None = None
    smtp_port: int = 25
    email_from: str = "marketpipe@localhost"
    email_to: tuple[str, ...] = ()
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    ui_url: str = "http://127.0.0.1:3000"
    retry_seconds: float = 1.0

    @classmethod
    def from_env(cls) -> AlertSettings:
        env = os.environ
        port_raw = env.get("MARKETPIPE_SMTP_PORT", "").strip() or "25"
        if not port_raw.isdigit():
            raise ConfigurationError(f"MARKETPIPE_SMTP_PORT={port_raw!r}: use a port number")
        settings = cls(
            webhook_url=env.get("MARKETPIPE_ALERT_WEBHOOK_URL") or None,
            notify_url=env.get("MARKETPIPE_NOTIFY_URL") or None,
            smtp_host=env.get("MARKETPIPE_SMTP_HOST") or None,
            smtp_port=int(port_raw),
            email_from=env.get("MARKETPIPE_ALERT_EMAIL_FROM") or cls.email_from,
            email_to=tuple(
                a.strip() for a in env.get("MARKETPIPE_ALERT_EMAIL_TO", "").split(",") if a.strip()
            ),
            smtp_user=env.get("MARKETPIPE_SMTP_USER") or None,
            smtp_password=env.get("MARKETPIPE_SMTP_PASSWORD") or None,
            smtp_starttls=env.get("MARKETPIPE_SMTP_STARTTLS", "").lower() in ("1", "true", "yes"),
            ui_url=(env.get("MARKETPIPE_UI_URL") or cls.ui_url).rstrip("/"),
            retry_seconds=seconds_from_env("MARKETPIPE_ALERT_RETRY_SECONDS", cls.retry_seconds),
        )
        if settings.smtp_host and not settings.email_to:
            raise ConfigurationError(
                "MARKETPIPE_SMTP_HOST is set but MARKETPIPE_ALERT_EMAIL_TO is not: "
                "set it to a comma list of addresses, or unset MARKETPIPE_SMTP_HOST"
            )
        return settings

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/runs/{run_id}"

    def redactor(self) -> Redactor:
        secrets = [self.smtp_password]
        for url in (self.webhook_url, self.notify_url):
            if url:  # the whole URL, and its parts that carry tokens (user:pass@, path, query)
                parts = urlsplit(url)
                secrets += [url, parts.password, parts.query]
                secrets += [p for p in parts.path.split("/") if len(p) >= 16]
        secrets += [v for k, v in os.environ.items() if k.endswith(_SECRET_SUFFIXES)]
        return Redactor([s for s in secrets if s and len(s) >= 6])


def destination(url: str) -> str:
    """Where a URL points, without credentials, path or query: safe to log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Alert:
    """One failed run, after its retries: what every channel and the failure log say."""

    kind: str  # "run_failure", or "check_failure" when a blocking check failed the run
    run_id: str
    job: str
    assets: list[str]
    partition: str | None  # a key, or "first...last" for a range run
    step: str | None
    error: str
    ui_url: str
    occurred_at: dt.datetime
    checks: list[dict] = field(default_factory=list)  # asset, check, description, metadata

    def payload(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "kind"}
        return {"event": self.kind, **fields, "occurred_at": self.occurred_at.isoformat()}

    def subject(self) -> str:
        what = "check failed" if self.kind == "check_failure" else "run failed"
        names = ", ".join(c["check"] for c in self.checks)
        where = ", ".join(self.assets) or self.job
        return (
            f"[marketpipe] {what}: {where}"
            + (f" {self.partition}" if self.partition else "")
            + (f" ({names})" if names else "")
        )

    def body(self) -> str:
        lines = [
            f"Run: {self.run_id}",
            f"Job: {self.job}",
            f"Assets: {', '.join(self.assets) or '-'}",
            f"Partition: {self.partition or '-'}",
            f"Step: {self.step or '-'}",
            f"Failed at: {self.occurred_at.isoformat()}",
            *(f"Check {c['asset']}/{c['check']}: {c['description']}" for c in self.checks),
            f"Error: {self.error}",
            f"View the run: {self.ui_url}",
        ]
        return "\n".join(lines) + "\n"


class DeliveryError(RuntimeError):
    """A channel still failed after its attempts; the message names it, never its secrets."""


class Notifier:
    """Sends to the configured channels; `log` is a logging.Logger or Dagster's context.log."""

    def __init__(self, settings: AlertSettings, log):
        self.settings, self.log, self.redact = settings, log, settings.redactor()

    def _attempt(self, channel: str, send: Callable[[], None], transient) -> None:
        wait = self.settings.retry_seconds
        for attempt in range(1, ALERT_ATTEMPTS + 1):
            try:
                send()
                return
            except Exception as error:  # noqa: BLE001 - every failure is reported below
                first_line = (str(error).splitlines() or [""])[0]
                reason = self.redact(f"{type(error).__name__}: {first_line}")
                if attempt == ALERT_ATTEMPTS or not transient(error):
                    raise DeliveryError(
                        f"{channel}: {reason} (gave up after {attempt} attempt(s))"
                    ) from None
                self.log.warning(f"{channel} attempt {attempt} failed: {reason}; retrying")
                time.sleep(wait)
                wait *= 2

    def post_json(self, channel: str, url: str, payload: dict) -> None:
        def send():
            response = httpx.post(url, json=payload, timeout=TIMEOUT)
            response.raise_for_status()

        def transient(error):
            if isinstance(error, httpx.HTTPStatusError):
                status = error.response.status_code
                return status >= 500 or status == 429
            return isinstance(error, httpx.TransportError)

        self._attempt(channel, send, transient)
        self.log.info(f"{channel}: POSTed to {destination(url)}")

    def email(self, subject: str, body: str) -> None:
        s = self.settings
        message = EmailMessage()
        message["Subject"], message["From"], message["To"] = subject, s.email_from, s.email_to
        message.set_content(body)

        def send():
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=TIMEOUT) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password or "")
                smtp.send_message(message)

        def transient(error):
            # 4xx replies and dropped connections pass; 5xx and bad credentials will not.
            if isinstance(error, smtplib.SMTPAuthenticationError):
                return False
            if isinstance(error, smtplib.SMTPResponseException):
                return 400 <= error.smtp_code < 500
            if isinstance(error, smtplib.SMTPRecipientsRefused):
                return False
            return isinstance(error, (OSError, smtplib.SMTPException))

        self._attempt("email", send, transient)
        self.log.info(f"email: sent to {len(s.email_to)} recipient(s) via {s.smtp_host}")

    def deliver(self, alert: Alert) -> tuple[list[str], dict[str, str]]:
        """Every configured channel for a failure: (delivered, {channel: reason undelivered})."""
        s = self.settings
        channels = {}
        if url := s.webhook_url:
            channels["webhook"] = lambda: self.post_json("webhook", url, alert.payload())
        if s.smtp_host:
            channels["email"] = lambda: self.email(alert.subject(), alert.body())
        delivered, undelivered = [], {}
        for channel, send in channels.items():
            try:
                send()
                delivered.append(channel)
            except DeliveryError as error:
                self.log.error(str(error))
                undelivered[channel] = str(error)
        return delivered, undelivered

    def scrub(self, alert: Alert) -> Alert:
        """The alert with its free texts (error, check descriptions) scrubbed of secrets."""
        checks = [
            {**c, "description": self.redact(str(c.get("description")))} for c in alert.checks
        ]
        return Alert(**{**asdict(alert), "error": self.redact(alert.error), "checks": checks})


# The failure log ---------------------------------------------------------------------------
FAILURE_LOG_SCHEMA = make_schema(
    {
        "run_id": pl.String,
        "kind": pl.String,
        "occurred_at": pl.Datetime("us", "UTC"),
        "job": pl.String,
        "assets": pl.List(pl.String),
        "partition": pl.String,
        "step": pl.String,
        "checks": pl.List(pl.String),
        "error": pl.String,
        "ui_url": pl.String,
        "notified": pl.List(pl.String),
        "undelivered": pl.List(pl.String),
    }
)


def failure_log_file(alert: Alert) -> str:
    """The alert's file, relative to the lake root."""
    day = alert.occurred_at.astimezone(dt.UTC).date().isoformat()
    return f"{FAILURE_LOG}/date={day}/{alert.run_id}.parquet"


def already_logged(lake: LakeResource, alert: Alert) -> bool:
    return lake.fs.exists(f"{lake.root}/{failure_log_file(alert)}")


def record_failure(
    lake: LakeResource, alert: Alert, notified: list[str], undelivered: dict[str, str]
) -> str:
    """Write the alert's one failure-log row; returns where.

    Seam for the warehouse (issue 5 item 4): when MARKETPIPE_WAREHOUSE_URL is set the log
    belongs in the warehouse's failure_log table; its writer goes here, upserting on run_id
    with these columns, and the lake file stays the fallback.
    """
    row = {
        **{k: getattr(alert, k) for k in ("run_id", "kind", "occurred_at", "job", "assets")},
        **{k: getattr(alert, k) for k in ("partition", "step", "error", "ui_url")},
        "checks": [f"{c['asset']}/{c['check']}" for c in alert.checks],
        "notified": notified,
        "undelivered": list(undelivered.values()),  # each names its channel
    }
    # Atomic (temp file and rename, or one S3 PUT), like every lake write; see lake.py.
    return lake.write_file(failure_log_file(alert), pl.DataFrame([row], schema=FAILURE_LOG_SCHEMA))


def read_failure_log(lake: LakeResource) -> pl.DataFrame:
    """Every failure-log row, oldest first (empty with the log's columns when there are none)."""
    return lake.read_files(f"{FAILURE_LOG}/date=*/*.parquet", FAILURE_LOG_SCHEMA).sort(
        "occurred_at"
    )
