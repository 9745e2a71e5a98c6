"""KIS access tokens (OAuth client credentials, POST /oauth2/tokenP), shared by every request,
every event loop and every process that uses the same key.

A token lives 24 h and KIS issues at most one per minute per key (EGW00133 otherwise), so asking
for one per run or per process would soon be refused. A token is therefore kept in memory and in
a 0600 file per key and server; an exclusive lock file serialises issuing across processes, so a
second process waits for the first's token instead of asking for another. A token is renewed 5
minutes before it expires, or when KIS answers that it expired (EGW00123); a new one is never
asked for sooner than a minute after the last, and on EGW00133 once more after a full minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ProviderDown, Unauthorized
from .http import Classifier, ProviderHttp
from .values import SEOUL

TOKEN_PATH = "/oauth2/tokenP"
TOKEN_INTERVAL = 60.0  # KIS issues one token per minute per key (EGW00133 otherwise)
REFRESH_MARGIN = 300.0  # renew a token 5 minutes before it expires
TOKEN_LIFETIME = 86_400.0  # when the answer carries no expiry
# Every KIS call, the token request included, sends JSON.
JSON_CONTENT = {"content-type": "application/json; charset=utf-8"}

logger = logging.getLogger(__name__)


class TokenIssueLimited(Unauthorized):
    """EGW00133: a token was issued for this key less than a minute ago. Not retried by the HTTP
    layer (that would hammer the token endpoint); the token manager waits and tries once more."""


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # epoch seconds
    issued_at: float  # epoch seconds, for the one-per-minute rule across processes


class TokenFile:
    """The access token of one key and base URL in a 0600 file: token and expiry, no secret.

    The name carries `credential_id(app_key, base_url)`, never the key. Writes are atomic
    (temporary file, then rename) and an exclusive lock file serialises issuing across
    processes, so a second process waits for the first's token instead of asking for another.
    """

    def __init__(self, cache_dir: Path, key_id: str):
        self.path = cache_dir / "kis" / f"token-{key_id}.json"

    def load(self) -> Token | None:
        try:
            data = json.loads(self.path.read_text())
            return Token(
                str(data["access_token"]), float(data["expires_at"]), float(data["issued_at"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, token: Token) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {
            "access_token": token.value,
            "expires_at": token.expires_at,
            "issued_at": token.issued_at,  # not secret: lets other processes keep the 1/min rule
        }
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def lock(self) -> int:
        """Block until this process holds the key's issuing lock; returns the descriptor."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class TokenCache:
    """One key's token as this process knows it (memory, then the file), and when a token was
    last issued for the key. Shared by every event loop of the source."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        file: TokenFile,
        *,
        interval: float = TOKEN_INTERVAL,
        margin: float = REFRESH_MARGIN,
    ):
        self.app_key, self.app_secret, self.file = app_key, app_secret, file
        self.interval, self.margin = interval, margin
        self.token: Token | None = None
        self.last_issue: float | None = None

    def fresh(self, stale: str | None) -> Token | None:
        """The token in memory unless it is `stale` or within `margin` of its expiry."""
        token = self.token
        if token is None or token.value == stale:
            return None
        return token if token.expires_at - time.time() > self.margin else None


class TokenSession:
    """One event loop's way to a token: the lock that makes concurrent requests share one
    refresh, and a rejected key that stays rejected for the session."""

    def __init__(self, cache: TokenCache, http: ProviderHttp, classify: Classifier):
        self.cache, self.http, self.classify = cache, http, classify
        self.lock = asyncio.Lock()
        self.failure: Unauthorized | None = None

    async def token(self, stale: str | None = None) -> str:
        """A valid access token; `stale` is one KIS just rejected, never handed out again."""
        cache = self.cache
        if (token := cache.fresh(stale)) is not None:
            return token.value
        async with self.lock:
            if (token := cache.fresh(stale)) is not None:
                return token.value
            if self.failure is not None:
                raise self.failure  # a rejected key stays rejected for this session
            fd = await _locked(cache.file)
            try:
                token = cache.file.load()  # another process may have renewed it
                if token is not None:
                    cache.last_issue = max(cache.last_issue or 0.0, token.issued_at)
                    cache.token = token
                if (token := cache.fresh(stale)) is None:
                    token = await self._issue()
                    cache.file.save(token)
                    cache.token = token
            except Unauthorized as error:
                self.failure = error
                raise
            finally:
                cache.file.unlock(fd)
        return token.value

    async def _issue(self) -> Token:
        """POST /oauth2/tokenP, never more than once per `interval`: wait until that long after
        the last issue, and on EGW00133 wait once more and try a second and last time."""
        cache = self.cache
        if cache.last_issue is not None:
            await asyncio.sleep(cache.last_issue + cache.interval - time.time())
        body = {
            "grant_type": "client_credentials",
            "appkey": cache.app_key,
            "appsecret": cache.app_secret,
        }
        for attempt in (1, 2):
            asked = time.time()
            try:
                payload, _ = await self.http.request_json(
                    "POST", TOKEN_PATH, classify=self.classify, json=body, headers=JSON_CONTENT
                )
                break
            except TokenIssueLimited as error:
                if attempt == 2:
                    raise ProviderDown(
                        f"{error}; refused again after waiting {cache.interval:.0f} s: "
                        "another process or machine is issuing tokens for this key"
                    ) from None
                # Someone issued a token we do not know of: one full interval from now.
                logger.warning("kis: token issue refused (one per minute); waiting to retry")
                cache.last_issue = time.time()
                await asyncio.sleep(cache.interval)
        # KIS stamped the issue between asking and answering: count the minute from the answer.
        cache.last_issue = time.time()
        token = parse_token(payload, asked, cache.last_issue)
        if token is None:
            raise self.http.schema_error(TOKEN_PATH, None, "the answer has no access_token")
        logger.info(
            "kis: issued an access token valid until %s",
            dt.datetime.fromtimestamp(token.expires_at, SEOUL).isoformat(timespec="seconds"),
        )
        return token


def parse_token(payload: Any, asked: float, answered: float) -> Token | None:
    """Expiry counted from when we asked (the safe side), issue time from the answer."""
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
        return None
    value = payload["access_token"]
    if not value:
        return None
    try:
        expires_at = asked + float(payload["expires_in"])
    except (KeyError, TypeError, ValueError):
        try:
            stamp = dt.datetime.strptime(payload["access_token_token_expired"], "%Y-%m-%d %H:%M:%S")
            expires_at = stamp.replace(tzinfo=SEOUL).timestamp()
        except (KeyError, TypeError, ValueError):
            expires_at = asked + TOKEN_LIFETIME
    return Token(value, expires_at, answered)


async def _locked(token_file: TokenFile) -> int:
    """The key's issuing lock, waited for in a thread; released even if we are cancelled."""
    waiting = asyncio.ensure_future(asyncio.to_thread(token_file.lock))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        waiting.add_done_callback(
            lambda t: t.cancelled() or t.exception() or token_file.unlock(t.result())
        )
        raise
