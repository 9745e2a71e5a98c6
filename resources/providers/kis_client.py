"""What every KIS Open API call shares (providers.md 5.4): the headers, the `rt_cd`/`msg_cd`
envelope and the errors it means, the one retry after an expired token, and the text values.

kis.py is the source; kis_daily.py, kis_intraday.py and kis_books.py hold one dataset's query,
extract and transform each, all through `KisClient.get`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx

from .errors import BadRequest, NotFound, ProviderError, RateLimited, TokenExpired, Unauthorized
from .http import ProviderHttp
from .kis_token import JSON_CONTENT, TOKEN_PATH, TokenCache, TokenIssueLimited, TokenSession

NAME = "kis"
MARKET = "krx"
QUOTATIONS = "/uapi/domestic-stock/v1/quotations"

RATE_LIMITED = "EGW00201"  # "초당 거래건수를 초과하였습니다", in a 500 or a 200
TOKEN_CODES = frozenset({"EGW00121", "EGW00123"})  # invalid token, expired token
TOKEN_ISSUE_LIMITED = "EGW00133"  # one token per minute
CREDENTIAL_CODES = frozenset({"EGW00103", "EGW00105"})  # invalid AppKey, invalid AppSecret
NO_DATA_RT_CD = "7"
NO_DATA_HINTS = ("자료가 없", "내용이 없", "종목")  # "no data", "nothing to show", "stock code"
CREDENTIAL_HINT = (
    "check KIS_APP_KEY and KIS_APP_SECRET, and that KIS_BASE_URL is the server (real or paper) "
    "the key was issued for"
)


def classify(payload: Any, response: httpx.Response) -> None:
    """Raise the typed error a KIS answer means, whatever its HTTP status.

    Data calls answer `{"rt_cd": "0"|..., "msg_cd", "msg1"}`; the token endpoint answers
    `{"error_code", "error_description"}` on failure. EGW00201 (rate limit) comes in a 500 or a
    200, so codes are read before the status.
    """
    if not isinstance(payload, dict):
        return
    rt_cd = str(payload.get("rt_cd", "0")).strip()
    if rt_cd == "0" and "error_code" not in payload:
        return
    code = str(payload.get("msg_cd") or payload.get("error_code") or "").strip()
    # Not cut here: the HTTP layer masks secrets first, then shortens every error.
    message = str(payload.get("msg1") or payload.get("error_description") or "").strip()
    request = response.request
    endpoint, symbol = request.url.path, request.url.params.get("FID_INPUT_ISCD")
    where = (NAME, endpoint, symbol)
    detail = f"{code or 'rt_cd ' + rt_cd} {message} (HTTP {response.status_code})"
    if code == RATE_LIMITED:
        raise RateLimited(*where, detail)
    if code == TOKEN_ISSUE_LIMITED:
        raise TokenIssueLimited(*where, detail)
    if code in TOKEN_CODES:
        raise TokenExpired(*where, detail)
    status = response.status_code
    if (
        code in CREDENTIAL_CODES
        or status in (401, 403)
        or (endpoint == TOKEN_PATH and status < 500)
    ):
        raise Unauthorized(*where, f"{detail}: {CREDENTIAL_HINT}")
    if rt_cd == NO_DATA_RT_CD or any(hint in message for hint in NO_DATA_HINTS):
        raise NotFound(*where, detail)
    if 400 <= status < 500:
        raise BadRequest(*where, detail)
    raise ProviderError(*where, detail)


class KisClient:
    """One event loop's session: the HTTP pool and the way to a token (kis_token.py)."""

    def __init__(self, http: ProviderHttp, tokens: TokenCache, app_key: str, app_secret: str):
        self.http = http
        self._app_key, self._app_secret = app_key, app_secret
        self.loop = asyncio.get_running_loop()
        self.tokens = TokenSession(tokens, http, classify)

    async def get(
        self, path: str, tr_id: str, symbol: str, params: dict[str, str], tr_cont: str = ""
    ) -> tuple[dict, httpx.Response]:
        """One KIS query; on an expired-token answer the token is renewed once and the query
        sent once more."""
        for attempt in (1, 2):
            token = await self.tokens.token()
            self.http.redact.add(token)  # a bearer token is a credential too
            headers = {
                **JSON_CONTENT,
                "authorization": f"Bearer {token}",
                "appkey": self._app_key,
                "appsecret": self._app_secret,
                "tr_id": tr_id,
                "custtype": "P",
                "tr_cont": tr_cont,
            }
            try:
                payload, response = await self.http.request_json(
                    "GET", path, symbol=symbol, classify=classify, params=params, headers=headers
                )
            except TokenExpired:
                if attempt == 2:
                    raise
                await self.tokens.token(stale=token)
                continue
            if not isinstance(payload, dict):
                raise self.http.schema_error(path, symbol, "the answer is not a JSON object")
            return payload, response
        raise AssertionError("unreachable")  # pragma: no cover

    def object(self, payload: dict, key: str, path: str, symbol: str) -> dict:
        value = payload.get(key)
        if not isinstance(value, dict):
            raise self.http.schema_error(path, symbol, f"the answer has no {key!r} object")
        return value

    def rows(self, payload: dict, path: str, symbol: str) -> list[dict]:
        """The chart rows of `output2`, without the row of empty strings an empty window is."""
        page = payload.get("output2")
        if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
            raise self.http.schema_error(path, symbol, "the answer has no 'output2' list of rows")
        return [r for r in page if any(str(v).strip() for v in r.values())]


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def number(value: Any) -> float | None:
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


def integer(value: Any) -> int | None:
    parsed = number(value)
    return None if parsed is None else int(parsed)


def clock(hhmmss: Any) -> dt.time | None:
    try:
        return dt.datetime.strptime(str(hhmmss).strip().zfill(6), "%H%M%S").time()
    except ValueError:
        return None
