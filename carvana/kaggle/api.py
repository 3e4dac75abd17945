"""The one door to the `kaggle` package: credentials, a quiet authenticated client, error mapping.

`import kaggle` (2.2.4) is not free: it creates a config folder, tries to authenticate and prints a
page of help when it cannot. So the package is imported here only, lazily, once a download or a
submission actually needs it, and always with the console redirected. Whatever kaggle prints is
discarded, never re-emitted: in verbose mode it prints request headers, credentials included.

Every failure leaves this module as a `KaggleError` whose one-line message says what to do. The
HTTP status decides the message (never the exception's text), and no message ever contains a key
or a token.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from carvana.core.errors import KaggleError
from carvana.kaggle.files import COMPETITION, RULES_URL

if TYPE_CHECKING:  # the real import is deferred to open_kaggle_api()
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

CONFIG_FILE = "kaggle.json"
SETUP_HELP = (
    "Kaggle credentials not found: download kaggle.json from https://www.kaggle.com/settings "
    "(Settings -> API -> Create New Token), save it as {config} and run 'chmod 600 {config}', "
    "or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in the environment"
)


# ---- Where kaggle 2.2.4 looks for credentials (mirrored here so checking needs no import) ----

def kaggle_config_dir() -> Path:
    """The folder kaggle 2.2.4 reads kaggle.json from.

    $KAGGLE_CONFIG_DIR, else ~/.kaggle; on Linux, when ~/.kaggle does not exist, the XDG folder
    ($XDG_CONFIG_HOME or ~/.config)/kaggle.
    """
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    home_dir = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(xdg) / "kaggle"
    return home_dir


def kaggle_config_file() -> Path:
    return kaggle_config_dir() / CONFIG_FILE


def credentials_hint() -> str:
    """Where to put the credentials, for a message: the very file this machine's kaggle client reads."""
    return f"put kaggle.json in {kaggle_config_dir()}/ or set KAGGLE_USERNAME and KAGGLE_KEY"


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _is_file(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a long token is no valid file name
        return False


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _access_token_source() -> str | None:
    """Where kaggle would take an access token from, or None (mirrors kagglesdk.kaggle_env)."""
    in_notebook = os.environ.get("KAGGLE_KERNEL_RUN_TYPE") is not None and os.environ.get("KAGGLE_DATA_PROXY_URL")
    notebook_token = os.environ.get("KAGGLE_API_V1_TOKEN")
    if in_notebook and notebook_token and _read_text(Path(notebook_token)):
        return "KAGGLE_API_V1_TOKEN"
    env_token = os.environ.get("KAGGLE_API_TOKEN")
    if env_token:
        # The variable holds either the token or the path of a file holding it; kaggle stops
        # looking as soon as the variable is set, even when that file turns out to be empty.
        if _is_file(Path(env_token)):
            return "KAGGLE_API_TOKEN" if _read_text(Path(env_token)) else None
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        token_file = Path(os.path.expanduser("~")) / ".kaggle" / name
        if _read_text(token_file):
            return str(token_file)
    return None


def _api_key_source() -> str | None:
    """Where kaggle would take a username + key from: kaggle.json, overridden field by field by env.

    An empty value counts as none: kaggle would send it and be refused (see credentials_problem).
    """
    from_file = _read_json_object(kaggle_config_file())
    username = os.environ.get("KAGGLE_USERNAME", from_file.get("username"))
    key = os.environ.get("KAGGLE_KEY", from_file.get("key"))
    if not _is_value(username) or not _is_value(key):
        return None
    if "KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ:
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    return str(kaggle_config_file())


def _oauth_source() -> str | None:
    """`kaggle auth login` leaves a refresh token in ~/.kaggle/credentials.json."""
    credentials = Path(os.path.expanduser("~")) / ".kaggle" / "credentials.json"
    return str(credentials) if _read_json_object(credentials).get("refresh_token") else None


def _is_value(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


_NEW_TOKEN = "download a new one from https://www.kaggle.com/settings (Settings -> API -> Create New Token)"
_FIELDS = ("username", "key")
_VARIABLES = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}


def _config_file_problem(config: Path) -> tuple[dict, str | None]:
    """kaggle.json's fields, and what is wrong with the file itself (None when it is fine or absent).

    kaggle silently treats a file it cannot parse as absent; here it is named instead.
    """
    try:
        if not config.exists() and not config.is_symlink():
            return {}, None
        if config.is_dir():
            return {}, f"is a folder, expected the kaggle.json file: remove it and {_NEW_TOKEN}"
        text = config.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return {}, f"is not a text file (not UTF-8): {_NEW_TOKEN}"
    except OSError as error:
        return {}, f"cannot be read ({error.strerror or type(error).__name__}): run 'chmod 600 {config}'"
    try:
        data = json.loads(text)
    except ValueError as error:
        where = f"line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else "?"
        return {}, f"is not valid JSON ({where}): {_NEW_TOKEN}"
    if not isinstance(data, dict):
        return {}, (f"holds a JSON {type(data).__name__}, expected an object with \"username\" and \"key\": "
                    f"{_NEW_TOKEN}")
    return data, None


def credentials_problem() -> str | None:
    """Why the Kaggle credentials that ARE set cannot work, as '<file or variable>: <what, what to do>'.

    None when they can work (as far as can be told without asking Kaggle) or when none are set at
    all (then SETUP_HELP applies). Follows kaggle 2.2.4: an access token wins; else username and
    key, each from the environment if set there (even when empty) or else from kaggle.json; else
    `kaggle auth login` credentials. Never includes a value, only names.
    """
    if _access_token_source() is not None:
        return None
    config = kaggle_config_file()
    from_file, file_problem = _config_file_problem(config)
    merged: dict[str, tuple[str, object]] = {}  # field -> (where it comes from, value)
    for field_name in _FIELDS:
        variable = _VARIABLES[field_name]
        if variable in os.environ:
            merged[field_name] = (variable, os.environ[variable])
        elif field_name in from_file:
            merged[field_name] = (str(config), from_file[field_name])
    # kaggle uses a username and key as soon as both are present, even empty ones, and is refused.
    for field_name, (where, value) in merged.items():
        if not _is_value(value):
            if where in _VARIABLES.values():
                return (f"{where}: set but empty (it takes precedence over kaggle.json): set it to your Kaggle "
                        f"{field_name}, or unset it")
            shown = "empty" if isinstance(value, str) else f"a JSON {type(value).__name__}, not text"
            return f"{where}: \"{field_name}\" is {shown}: {_NEW_TOKEN}"
    if len(merged) == len(_FIELDS) or _oauth_source() is not None:
        return None
    if file_problem is not None:
        return f"{config}: {file_problem}"
    if merged:
        have = next(f for f in _FIELDS if f in merged)
        missing = next(f for f in _FIELDS if f not in merged)
        where = merged[have][0]
        if where in _VARIABLES.values():
            return (f"{where}: set, but there is no Kaggle {missing}: set {_VARIABLES[missing]} too, or put both "
                    f"in {config}")
        return f"{config}: has \"{have}\" but no \"{missing}\": {_NEW_TOKEN}"
    if config.exists():
        return f"{config}: has neither \"username\" nor \"key\": {_NEW_TOKEN}"
    return _token_variable_problem()


def _token_variable_problem() -> str | None:
    """KAGGLE_API_TOKEN set to nothing, or to a file with nothing in it (kaggle then ignores it)."""
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token is None:
        return None
    if not token.strip():
        return "KAGGLE_API_TOKEN: set but empty: set it to your Kaggle API token (or a file holding it), or unset it"
    if _is_file(Path(token)):
        return f"KAGGLE_API_TOKEN: names the file {token}, which holds no token: put your Kaggle API token in it"
    return None


def kaggle_credentials_usable() -> bool:
    """True when credentials are configured, False when none are set at all.

    Raises KaggleError when some are set but cannot work, so that `--dataset auto` tells a user
    who meant to use Kaggle what to fix instead of quietly falling back to the sample.
    """
    if kaggle_credentials_configured():
        return True
    problem = credentials_problem()
    if problem is not None:
        raise KaggleError(problem)
    return False


def credentials_source() -> str | None:
    """Names (never the values of) the credentials kaggle would use, in kaggle's own order."""
    return _access_token_source() or _api_key_source() or _oauth_source()


def kaggle_credentials_configured() -> bool:
    """True when kaggle 2.2.4 would find credentials. Checks files and env only; imports nothing."""
    return credentials_source() is not None


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


# ---- Opening the API and mapping its failures ----

@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Swallow what kaggle prints (help pages, warnings, its own progress bars)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _secrets() -> list[str]:
    """Every credential value in reach, so that a message built from foreign text can be scrubbed."""
    values = [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    values.append(str(_read_json_object(kaggle_config_file()).get("key", "")))
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
    import requests  # installed with kaggle; cheap compared to kaggle itself

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
