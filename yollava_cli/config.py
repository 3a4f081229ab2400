"""Where yollava keeps its data, and the small JSON config file that lives there."""

import os
from pathlib import Path

import platformdirs

from yollava_cli.errors import UserError

HOME_ENV = "YOLLAVA_HOME"
MODEL_ENV = "YOLLAVA_MODEL"
# the compute choices (models.compute), named here once for the config file's schema and the checks
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZE = ("none", "4bit", "8bit")


def data_dir() -> Path:
    """The data directory: $YOLLAVA_HOME, else the platform's user data dir."""
    root = os.environ.get(HOME_ENV) or platformdirs.user_data_dir("yollava")
    return Path(root).expanduser()


def config_path() -> Path:
    return data_dir() / "config.json"


def load_config() -> dict:
    """config.json's settings, checked against its schema (schema.ConfigFile), defaults filled in;
    a key left out means its default ("model": the offline default, models.families)."""
    from yollava_cli.schema import ConfigFile, read_json

    path = config_path()
    if not path.exists():
        return ConfigFile().model_dump()
    try:
        return read_json(path, ConfigFile).model_dump()
    except UserError as e:
        raise UserError(f"{e}; fix or delete the file") from None
