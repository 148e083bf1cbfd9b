"""Tiny typed helpers that read settings from the environment (after healthchecks' hc/settings.py).

Every helper also reads ``NAME_FILE`` when ``NAME`` is unset, so secrets can come from Docker secrets.
"""
from __future__ import annotations

import os
from pathlib import Path


def envstr(name: str, default: str = "") -> str:
    if name in os.environ:
        return os.environ[name]
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return default


def envbool(name: str, default: bool) -> bool:
    value = envstr(name, "")
    if value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: int) -> int:
    value = envstr(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def envlist(name: str, default: list[str]) -> list[str]:
    value = envstr(name, "")
    return [item.strip() for item in value.split(",") if item.strip()] if value else default
