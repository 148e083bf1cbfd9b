"""Read import files line by line. A bad line is reported with its number; nothing is dropped silently."""
from __future__ import annotations

import json
from pathlib import Path

from rest_framework.exceptions import ValidationError

from .api.serializers import PromptInSerializer
from .formats import FORMATS, hh_pair_to_item
from .imports.readers import open_text

READ_ERRORS = (UnicodeDecodeError, OSError, EOFError)  # not UTF-8 text, a broken gzip stream


def read_import_file(path: Path, *, fmt: str = "items", hh_subset: str = "") -> tuple[list[dict], list[int], int]:
    """(items, their line numbers, lines left out). Raises ValidationError {"lines": {n: [...]}} listing
    every bad line. For hh-rlhf, pairs with identical or empty responses are counted as left out."""
    if fmt not in FORMATS:
        raise ValidationError({"format": [f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}"]})
    try:
        return _read(path, fmt, hh_subset)
    except READ_ERRORS as exc:  # not UTF-8 text, or a broken gzip stream (gzip is known by its bytes, not its name)
        raise ValidationError({"file": [f"cannot read the file as UTF-8 text (or gzip of it): {exc}"]}) from None


def _read(path: Path, fmt: str, hh_subset: str) -> tuple[list[dict], list[int], int]:
    items, line_numbers, errors, left_out = [], [], {}, 0
    with open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors[str(number)] = [f"not valid JSON: {exc.msg.removesuffix(' starting at')} at column {exc.colno}"]
                continue
            if fmt == "hh-rlhf":
                try:
                    record = hh_pair_to_item(record, subset=hh_subset or path.parent.name)
                except (KeyError, TypeError, ValueError) as exc:
                    errors[str(number)] = [f"not an HH-RLHF pair: {exc}"]
                    continue
                if record is None:
                    left_out += 1
                    continue
            item = PromptInSerializer(data=record)
            if not item.is_valid():
                errors[str(number)] = item.errors
                continue
            items.append(dict(item.validated_data))
            line_numbers.append(number)
    if errors:
        raise ValidationError({"lines": errors})
    return items, line_numbers, left_out


def format_errors(detail, path: tuple[str, ...] = ()) -> list[str]:
    """Flatten DRF error detail into messages such as 'line 3: candidates.1.text: This field is required.'"""
    if isinstance(detail, dict):
        return [m for key, value in detail.items() for m in format_errors(value, path + (str(key),))]
    if isinstance(detail, list):
        return [m for i, value in enumerate(detail)
                for m in format_errors(value, path + (str(i),) if isinstance(value, dict) else path)]
    if path[:1] == ("lines",) and len(path) >= 2:
        where = f"line {path[1]}" + (f": {'.'.join(path[2:])}" if len(path) > 2 else "")
    else:
        where = ".".join(path)
    return [f"{where}: {detail}" if where else str(detail)]
