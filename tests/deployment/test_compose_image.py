"""docker-compose and the image agree: every volume the app containers mount is a folder the image
creates and gives to its non-root user (a named volume mounted on a missing path is created root-owned,
and the first round could not write its artifacts), and so is every other folder the app writes at run
time. No Docker engine here: the checks read the Dockerfile and the compose file, and the last one runs
the app's start-up without root's privileges in a folder laid out like the image."""
from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import yaml
from django.conf import settings

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


# --- Every path the app writes --------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "platform" / "Dockerfile").read_text().replace("\\\n", " ")


def dockerfile_env() -> dict[str, str]:
    env = {}
    for line in dockerfile().splitlines():
        if line.startswith("ENV "):
            env.update(token.split("=", 1) for token in shlex.split(line[4:]))
    return env


def image_user() -> str:
    return re.findall(r"^USER (\w+)", dockerfile(), flags=re.M)[-1]


def user_folders() -> list[str]:
    """Folders the image gives its user: those it chowns to it, and its home (useradd --create-home)."""
    user = image_user()
    owned = [path for who, path in re.findall(r"chown -R (\w+) ((?:/[\w.-]+)+)", dockerfile()) if who == user]
    assert re.search(rf"useradd --create-home .*\b{user}\b", dockerfile()), "the user has no home"
    return owned + [f"/home/{user}"]


def app_services() -> dict[str, dict]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("rlhf-loop")}


def compose_value(value) -> str:
    """A compose value as docker-compose passes it when the operator set nothing: ``${X:-default}`` is the
    default (``${X:?message}`` is left as it is: compose refuses to start without X)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def app_env(service: dict) -> dict[str, str]:
    """What the app sees: the image's ENV, overridden by the service's environment."""
    return {**dockerfile_env(), **{k: compose_value(v) for k, v in service.get("environment", {}).items()}}


def written_folders(service: dict) -> dict[str, str]:
    """Where a container of ``service`` writes at run time:

    - VAR_DIR: the secret key the settings generate when SECRET_KEY is unset (and SQLite's default file);
    - ARTIFACT_ROOT: model versions and snapshots (annotation/loop/worker.py, snapshots.py);
    - the beat schedule, where the beat command's ``-s`` puts it;
    - the user's home: caches (training/base_import.py under ~/.cache, Hugging Face's).

    Logs go to the console (another test); STATIC_ROOT is written at build time only."""
    env = app_env(service)
    written = {"VAR_DIR": env["VAR_DIR"], "ARTIFACT_ROOT": env["ARTIFACT_ROOT"], "home": f"/home/{image_user()}"}
    command = service.get("command", [])
    if "beat" in command:
        written["beat schedule"] = str(PurePosixPath(command[command.index("-s") + 1]).parent)
    return written


def within(path: str, folders: list[str]) -> bool:
    return any((path.rstrip("/") + "/").startswith(folder.rstrip("/") + "/") for folder in folders)


def test_every_folder_the_app_writes_is_one_the_image_gives_its_user():
    folders = user_folders()
    made = re.findall(r"mkdir -p ((?:/[\w.-]+)+)", dockerfile())
    assert image_user() != "root" and folders
    written = {(name, what): path for name, service in app_services().items()
               for what, path in written_folders(service).items()}
    assert ("beat", "beat schedule") in written, "no beat service: the compose file changed shape"
    for (name, what), path in written.items():
        assert within(path, folders), f"{name}: {what} ({path}) is not a folder the image gives {image_user()}"
    for folder in folders[:-1]:  # the home is made by useradd
        assert any(within(path, [folder]) for path in made), f"{folder} is chowned but never created"


def test_the_static_files_are_collected_into_the_image_before_it_drops_root():
    lines = dockerfile().splitlines()
    collect = next(i for i, line in enumerate(lines) if "manage.py collectstatic" in line)
    user = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert collect < user
    assert {app_env(s)["STATIC_ROOT"] for s in app_services().values()} == {dockerfile_env()["STATIC_ROOT"]}


def test_logs_go_to_the_console_never_to_a_file():
    assert {h["class"] for h in settings.LOGGING["handlers"].values()} == {"logging.StreamHandler"}
    gunicorn = runpy.run_path(str(ROOT / "platform" / "gunicorn.conf.py"))
    assert gunicorn["errorlog"] == "-"
    assert "GUNICORN_ACCESSLOG" not in {k for s in app_services().values() for k in s.get("environment", {})}


# The app's start-up and its run-time writes, in a child process without root's privileges. Prints what it
# could write outside the folders it was given (nothing, if the permissions hold).
STARTUP = """
import json, sys
from pathlib import Path
import django
django.setup()  # the settings write the generated secret key into VAR_DIR and make sure STATIC_ROOT exists
for folder in map(Path, sys.argv[2:]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "written-by-the-app").write_text("ok")
stray = []
for folder in map(Path, sys.argv[1].split(":")):
    try:
        (folder / "stray").write_text("should not be possible")
        stray.append(str(folder))
    except PermissionError:
        pass
print(json.dumps(stray))
"""


def test_without_root_privileges_the_app_starts_and_writes_where_the_image_lets_it():
    """The image's folders are laid out under a temporary root: those the image gives its user writable,
    every other one read-only (as root-owned folders are to that user). Root's privileges are dropped
    (setpriv), so the permission bits bind as they would for the image's user."""
    root = Path(tempfile.mkdtemp(prefix="rlhf-image-"))
    inside = lambda path: root / str(path).lstrip("/")  # noqa: E731
    env = {k: v for k, v in app_env(app_services()["beat"]).items() if k not in ("SECRET_KEY", "PYTHONPATH")}
    others = [env["STATIC_ROOT"], "/app"]  # collected by root at build time; the WORKDIR
    try:
        for folder in re.findall(r"mkdir -p ((?:/[\w.-]+)+)", dockerfile()) + user_folders() + others:
            inside(folder).mkdir(parents=True, exist_ok=True)
        writable = [inside(folder) for folder in user_folders()]
        for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
            folder.chmod(0o755 if any(folder == w or w in folder.parents for w in writable) else 0o555)
        root.chmod(0o555)
        env.update({k: str(inside(env[k])) for k in ("VAR_DIR", "ARTIFACT_ROOT", "STATIC_ROOT")})
        env.update(PATH=os.environ["PATH"], HOME=str(inside(f"/home/{image_user()}")),
                   PYTHONPATH=f"{ROOT}:{ROOT / 'platform'}")
        schedule = PurePosixPath(written_folders(app_services()["beat"])["beat schedule"])
        folders = [Path(env["ARTIFACT_ROOT"]) / "projects" / "1" / "jobs" / "1-sft", inside(schedule),
                   Path(env["HOME"]) / ".cache"]
        unprivileged = (["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
                        if os.geteuid() == 0 else [])
        run = subprocess.run([*unprivileged, sys.executable, "-c", STARTUP, f"{inside('/app')}:{env['STATIC_ROOT']}",
                              *map(str, folders)], cwd=inside("/app"), env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(run.stdout.splitlines()[-1]) == []  # the read-only folders really were read-only
        key = Path(env["VAR_DIR"]) / "secret_key"
        assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 50
        assert all((folder / "written-by-the-app").read_text() == "ok" for folder in folders)
    finally:
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
        shutil.rmtree(root)
