"""docker-compose and the image agree: every volume the app containers mount is a folder the image
creates and gives to its non-root user (a named volume mounted on a missing path is created root-owned,
and the first round could not write its artifacts)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def app_mounts() -> set[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    targets = set()
    for service in compose["services"].values():
        if service.get("image", "").startswith("rlhf-loop"):
            for volume in service.get("volumes", []):
                source, target = volume.split(":")[:2]
                if not source.startswith((".", "/")):  # a named volume
                    targets.add(target)
    return targets


def test_every_volume_of_the_app_containers_is_a_folder_the_image_user_owns():
    dockerfile = (ROOT / "platform" / "Dockerfile").read_text()
    made = set(re.findall(r"mkdir -p ((?:/[\w.-]+)+)", dockerfile))
    owned = re.findall(r"chown -R (\w+) ((?:/[\w.-]+)+)", dockerfile)
    user = re.findall(r"^USER (\w+)", dockerfile, flags=re.M)
    mounts = app_mounts()
    assert mounts, "no app volumes found: the compose file changed shape"
    assert user and user[-1] != "root"
    for target in mounts:
        assert any(path == target or path.startswith(target + "/") for path in made), f"{target} is not created"
        assert any(who == user[-1] and (target + "/").startswith(path.rstrip("/") + "/") for who, path in owned), \
            f"{target} is not owned by {user[-1]}"
