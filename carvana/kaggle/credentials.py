"""Where the kaggle client finds credentials, and why credentials that are set cannot work; no side effects.

Checking must not import the `kaggle` package: importing it authenticates and prints a page of help,
and importing `kaggle.api.kaggle_api_extended` creates its config folder. So the folder kaggle.json
is read from is worked out here as kaggle 2.2.4 works it out, and the username and key are merged
from kaggle.json and the environment as its `read_config_file` and `read_config_environment` merge
them. Access tokens are looked up by kagglesdk's own `get_access_token_from_env`, which reads and
writes nothing else. kaggle silently treats a kaggle.json it cannot parse as absent, then prints its
help; `credentials_problem` names the file or variable and says what to do instead.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kagglesdk.kaggle_creds import KaggleCredentials
from kagglesdk.kaggle_env import get_access_token_from_env

from carvana.core.errors import KaggleError

CONFIG_FILE = "kaggle.json"
SETUP_HELP = (
    "Kaggle credentials not found: download kaggle.json from https://www.kaggle.com/settings "
    "(Settings -> API -> Create New Token), save it as {config} and run 'chmod 600 {config}', "
    "or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in the environment"
)
_NEW_TOKEN = "download a new one from https://www.kaggle.com/settings (Settings -> API -> Create New Token)"
_VARIABLES = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}  # kaggle.json field -> its variable
_API_KEY_VARIABLES = "KAGGLE_USERNAME/KAGGLE_KEY"


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


def read_config(path: Path) -> tuple[dict, str | None]:
    """kaggle.json's fields, and what is wrong with the file itself (None when it is fine or absent)."""
    try:
        if not path.exists() and not path.is_symlink():
            return {}, None
        if path.is_dir():
            return {}, f"is a folder, expected the kaggle.json file: remove it and {_NEW_TOKEN}"
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return {}, f"is not a text file (not UTF-8): {_NEW_TOKEN}"
    except OSError as error:
        return {}, f"cannot be read ({error.strerror or type(error).__name__}): run 'chmod 600 {path}'"
    try:
        data = json.loads(text)
    except ValueError as error:
        where = f"line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else "?"
        return {}, f"is not valid JSON ({where}): {_NEW_TOKEN}"
    if not isinstance(data, dict):
        return {}, (f"holds a JSON {type(data).__name__}, expected an object with \"username\" and \"key\": "
                    f"{_NEW_TOKEN}")
    return data, None


def _api_key_fields(from_file: dict) -> dict[str, tuple[str, object]]:
    """username and key as kaggle merges them: field -> (the variable or file it comes from, its value).

    A variable that is set wins over kaggle.json, even when it is empty.
    """
    merged: dict[str, tuple[str, object]] = {}
    for field_name, variable in _VARIABLES.items():
        if variable in os.environ:
            merged[field_name] = (variable, os.environ[variable])
        elif field_name in from_file:
            merged[field_name] = (str(kaggle_config_file()), from_file[field_name])
    return merged


def _is_value(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_file(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a long token is no valid file name
        return False


def _access_token_source() -> str | None:
    """Where kaggle takes an access token from (a variable or ~/.kaggle/access_token), or None."""
    try:
        token, source = get_access_token_from_env()
    except (OSError, ValueError):  # a token file it cannot read: kaggle would fail on it too
        return None
    if not token:
        return None
    return os.path.expanduser("~/.kaggle/access_token") if source == "access_token" else source


def _api_key_source() -> str | None:
    """Where kaggle takes a username + key from; an empty value counts as none (kaggle would be refused)."""
    merged = _api_key_fields(read_config(kaggle_config_file())[0])
    if len(merged) < len(_VARIABLES) or not all(_is_value(value) for _, value in merged.values()):
        return None
    from_variables = all(where in _VARIABLES.values() for where, _ in merged.values())
    return _API_KEY_VARIABLES if from_variables else str(kaggle_config_file())


def _oauth_source() -> str | None:
    """`kaggle auth login` leaves a refresh token in ~/.kaggle/credentials.json."""
    credentials = Path(os.path.expanduser(KaggleCredentials.DEFAULT_CREDENTIALS_FILE))
    return str(credentials) if read_config(credentials)[0].get("refresh_token") else None


def credentials_source() -> str | None:
    """Names (never the values of) the credentials kaggle would use, in kaggle's own order."""
    return _access_token_source() or _api_key_source() or _oauth_source()


def kaggle_credentials_configured() -> bool:
    """True when kaggle 2.2.4 would find credentials. Reads files and the environment only."""
    return credentials_source() is not None


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
    from_file, file_problem = read_config(config)
    merged = _api_key_fields(from_file)
    # kaggle uses a username and key as soon as both are present, even empty ones, and is refused.
    for field_name, (where, value) in merged.items():
        if not _is_value(value):
            if where in _VARIABLES.values():
                return (f"{where}: set but empty (it takes precedence over kaggle.json): set it to your Kaggle "
                        f"{field_name}, or unset it")
            shown = "empty" if isinstance(value, str) else f"a JSON {type(value).__name__}, not text"
            return f"{where}: \"{field_name}\" is {shown}: {_NEW_TOKEN}"
    if len(merged) == len(_VARIABLES) or _oauth_source() is not None:
        return None
    if file_problem is not None:
        return f"{config}: {file_problem}"
    if merged:
        (have, (where, _)), = merged.items()
        missing = next(f for f in _VARIABLES if f not in merged)
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
