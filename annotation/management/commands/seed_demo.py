from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import services
from annotation.importing import read_import_file
from annotation.models import ModelVersion, Project, Role, TaskKind

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures/demo"
BASE_MODEL = Path(__file__).resolve().parents[3] / "training/assets/tiny-base"
IMPORTED_LABELS = 200  # HH-RLHF's own human preferences, so a first round can start right away
DEMO_PROJECT = "Demo: helpful assistant (HH-RLHF)"
OASST_PROJECT = "Demo: OpenAssistant rankings (k=4)"
GUIDELINES = """\
# How to label

You are teaching an assistant to be **helpful, honest and harmless**.

## Demonstrations
Write the reply you would want the assistant to give: answer the last user turn, use the conversation
so far, say so when you don't know, and refuse harmful requests politely.

## Rankings
Order the responses from best (1) to worst. Give two responses the same rank only if you truly
cannot tell them apart. Flag a response that ignores the instruction, makes things up, would be
inappropriate from a customer assistant, or contains harmful, sexual or violent content.

## Skipping
Skip a task you cannot judge (for example, it needs expertise you lack), and say why.
"""
USERS = [("demo-admin", Role.ADMIN, True), ("demo-labeler-1", Role.LABELER, False),
         ("demo-labeler-2", Role.LABELER, False)]


class Command(BaseCommand):
    help = ("Create the demo projects, a demo admin and two demo labelers (credentials printed once, at "
            "creation), seeded with real HH-RLHF prompts and response pairs shipped in the repo.")

    def add_arguments(self, parser):
        parser.add_argument("--base", help="a registered base model (manage.py register_base) for the demo "
                                           "project, such as SmolLM2-135M-Instruct; default: the offline tiny base")

    @transaction.atomic
    def handle(self, *args, base: str | None = None, **options):
        User = get_user_model()
        if Project.objects.filter(name=DEMO_PROJECT).exists():
            self.stdout.write(f"Demo project {DEMO_PROJECT!r} already exists; its users' passwords were printed when "
                              "it was created (reset one with: manage.py changepassword demo-labeler-1).")
            return
        registered = None
        if base:
            registered = ModelVersion.objects.registered_bases().filter(name=base).first()
            if registered is None:
                raise CommandError(f"no registered base {base!r}: run manage.py register_base first")
        # A real instruct base reads prompts in its chat template and trains with the "cpu" preset; the
        # tiny base knows no template and has a preset of its own.
        project = Project.objects.create(
            name=DEMO_PROJECT, guidelines=GUIDELINES, k=2, overlap=2, lease_seconds=900,
            demonstrations_enabled=True, rankings_enabled=True, prompt_writing_enabled=True,
            chat_template=registered is not None, round_preset="cpu" if registered else "tiny",
        )
        credentials = []
        for username, role, staff in USERS:
            password = secrets.token_urlsafe(12)
            user = User.objects.filter(username=username).first() or User(username=username)
            user.is_staff = user.is_superuser = staff
            user.set_password(password)
            user.save()
            services.add_member(project=project, user=user, role=role)
            credentials.append((username, password, "site admin + project admin" if staff else role))
        result = self.seed(project, FIXTURES / "hh_rlhf_helpful.jsonl")
        self.stdout.write(self.style.SUCCESS(
            f"Created {DEMO_PROJECT!r} with {len(result.created)} prompts, each with a demonstration task and a "
            "2-response ranking task."))
        self.import_hh_labels(project, result.created[:IMPORTED_LABELS])
        chosen = registered or ModelVersion.objects.create(
            project=project, stage=ModelVersion.Stage.BASE, name="offline tiny base", artifact_path=str(BASE_MODEL))
        Project.objects.filter(pk=project.pk).update(base_model=chosen)
        self.stdout.write(f"Imported Anthropic's preference and chosen response for {IMPORTED_LABELS} prompts as "
                          f"labels (user 'hh-rlhf-import'); base model: {chosen.name} ({chosen.artifact_path}). "
                          f"Start a round at /manage/projects/{project.pk}/.")
        oasst = Project.objects.create(name=OASST_PROJECT, guidelines=GUIDELINES, k=4, overlap=2,
                                       demonstrations_enabled=False, prompt_writing_enabled=False)
        for membership in project.memberships.filter(user__username__in=[name for name, _, _ in USERS]):
            services.add_member(project=oasst, user=membership.user, role=membership.role)
        result = self.seed(oasst, FIXTURES / "oasst_k4.jsonl")
        self.stdout.write(self.style.SUCCESS(
            f"Created {OASST_PROJECT!r} with {len(result.created)} 4-response ranking tasks from OpenAssistant."))
        self.stdout.write("Demo accounts (shown only this once; keep them):")
        for username, password, role in credentials:
            self.stdout.write(f"  {username:16} {password:20} {role}")

    def import_hh_labels(self, project: Project, prompts) -> None:
        """HH-RLHF's chosen response (the first candidate) ranks 1 and is the demonstration."""
        User = get_user_model()
        importer, _ = User.objects.get_or_create(username="hh-rlhf-import", defaults={"is_active": False})
        services.add_member(project=project, user=importer, role=Role.LABELER)
        for prompt in prompts:
            ranking_task = prompt.tasks.get(kind=TaskKind.RANKING)
            chosen, rejected = prompt.candidates.order_by("id")
            entries = [{"candidate": chosen.pk, "rank": 1}, {"candidate": rejected.pk, "rank": 2}]
            services.submit_ranking(labeler=importer, task=ranking_task, seconds_spent=0, entries=entries)
            services.submit_demonstration(author=importer, task=prompt.tasks.get(kind=TaskKind.DEMONSTRATION),
                                          text=chosen.text, seconds_spent=0)

    def seed(self, project: Project, fixture: Path):
        items, line_numbers, _ = read_import_file(fixture)
        return services.bulk_create_prompts(project=project, items=items, line_numbers=line_numbers)
