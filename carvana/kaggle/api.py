"""The one door to the `kaggle` package: a quiet authenticated client and its failures as KaggleErrors.

`import kaggle` (2.2.4) is not free: it creates a config folder, tries to authenticate and prints a
page of help when it cannot. So the package is imported here only, lazily, once a download or a
submission actually needs it, and always with the console redirected. Whatever kaggle prints is
discarded, never re-emitted: in verbose mode it prints request headers, credentials included.
Whether credentials are set at all, and what is wrong with them, is `carvana.kaggle.credentials`.

Every failure leaves this module as a `KaggleError` whose one-line message says what to do. The
HTTP status decides the message (never the exception's text), and no message ever contains a key
or a token.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import requests

from carvana.core.errors import KaggleError
from carvana.kaggle.credentials import (CONFIG_FILE, SETUP_HELP, credentials_source, kaggle_config_dir,
                                        kaggle_config_file, kaggle_credentials_usable, read_config)
from carvana.kaggle.files import COMPETITION, RULES_URL

if TYPE_CHECKING:  # the real import is deferred to open_kaggle_api()
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)
_warned_about: set[Path] = set()


def warn_if_config_readable_by_others() -> None:
    """One warning per file and process, like kaggle's own, but through logging (stderr by default)."""
    config = kaggle_config_file()
    try:
        mode = config.stat().st_mode
    except OSError:
        return
    if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH) and config not in _warned_about:
        _warned_about.add(config)
        log.warning("%s: your Kaggle API key is readable by other users; run 'chmod 600 %s'", config, config)


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Swallow what kaggle prints (help pages, warnings, its own progress bars)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _secrets() -> list[str]:
    """Every credential value in reach, so that a message built from foreign text can be scrubbed."""
    values = [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    values.append(str(read_config(kaggle_config_file())[0].get("key", "")))
    return [v for v in values if len(v) >= 4]


def scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _status_code(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    # A requests.Response is falsy for 4xx/5xx, so test for None, not truth.
    return getattr(response, "status_code", None) if response is not None else None


def _message_for_status(status: int, action: str) -> str:
    if status == 401:
        source = credentials_source() or "your Kaggle credentials"
        return (f"Kaggle rejected the credentials from {source} while {action} (HTTP 401): "
                "create a new token at https://www.kaggle.com/settings (Settings -> API)")
    if status == 403:
        return (f"Kaggle refused {action} (HTTP 403): sign in and accept the rules at {RULES_URL} "
                "(the same account as your credentials), then run again")
    if status == 404:
        return f"Kaggle has no such file or competition while {action} (HTTP 404): is {COMPETITION!r} still online?"
    if status == 429:
        return f"Kaggle is rate-limiting requests while {action} (HTTP 429): wait a few minutes and run again"
    return f"Kaggle answered HTTP {status} while {action}: try again later"


def kaggle_error_for(error: BaseException, action: str) -> KaggleError | None:
    """The KaggleError a failure from the kaggle client stands for, or None when it is not one of its."""
    status = _status_code(error)
    if status is not None:
        return KaggleError(_message_for_status(status, action))
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return KaggleError(f"cannot reach Kaggle while {action} ({type(error).__name__}): "
                           "check your internet connection and proxy settings, then run again")
    if isinstance(error, requests.RequestException):
        return KaggleError(f"talking to Kaggle failed while {action} ({type(error).__name__}): run again")
    return None


@contextlib.contextmanager
def kaggle_errors(action: str) -> Iterator[None]:
    """Turn the kaggle client's exceptions into KaggleErrors; `action` says what was being done."""
    try:
        yield
    except KaggleError:
        raise
    except SystemExit:  # kaggle's authenticate() calls exit(1) when no credentials work
        source = credentials_source() or "your Kaggle credentials"
        raise KaggleError(f"Kaggle did not accept the credentials from {source} while {action}: "
                          "create a new token at https://www.kaggle.com/settings (Settings -> API)") from None
    except Exception as e:
        mapped = kaggle_error_for(e, action)
        if mapped is None:
            raise
        raise mapped from None


def _environment_args() -> list[str]:
    # Only the endpoint switch: kaggle's --verbose would print request headers, credentials included.
    return ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []


def open_kaggle_api() -> "KaggleApi":
    """An authenticated KaggleApi, or a KaggleError saying how to set credentials up."""
    if not kaggle_credentials_usable():
        raise KaggleError(SETUP_HELP.format(config=kaggle_config_file()))
    warn_if_config_readable_by_others()
    with quiet_console(), kaggle_errors("signing in to Kaggle"):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        # kaggle reads its config folder and endpoint once, when first imported. Re-read them so
        # the client uses the very file kaggle_credentials_configured() looked at, even if the
        # environment changed since (notebooks, tests).
        config_dir = kaggle_config_dir()
        api.config_dir = str(config_dir)
        api.config = str(config_dir / CONFIG_FILE)
        api.args = _environment_args()
        api.authenticate()
    return api
