#!/usr/bin/env python3
"""Django's command-line utility."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# The Django project package lives in platform/rlhf_platform. platform/ goes on sys.path as a
# directory; it is never imported as a package named `platform`, which would shadow the stdlib.
sys.path.insert(1, str(Path(__file__).resolve().parent / "platform"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
