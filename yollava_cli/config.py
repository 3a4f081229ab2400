"""Where yollava keeps its data, and the small JSON config file that lives there."""

import json
import os
from pathlib import Path

import platformdirs

from yollava_cli.errors import UserError

HOME_ENV = "YOLLAVA_HOME"
MODEL_ENV = "YOLLAVA_MODEL"
DEFAULTS = {"default_pools": [], "feature_cache_mb": 4096}  # "model": the offline default (models.families)


def data_dir() -> Path:
    """The data directory: $YOLLAVA_HOME, else the platform's user data dir."""
    root = os.environ.get(HOME_ENV) or platformdirs.user_data_dir("yollava")
    return Path(root).expanduser()


def config_path() -> Path:
    return data_dir() / "config.json"


def load_config() -> dict:
    path = config_path()
    if not path.exists():
        return dict(DEFAULTS)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable config ({e}); fix or delete the file") from None
    if not isinstance(stored, dict):
        raise UserError(f"{path}: config must be a JSON object; fix or delete the file")
    return {**DEFAULTS, **stored}
