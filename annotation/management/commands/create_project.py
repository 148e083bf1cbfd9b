from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException

from annotation import services
from annotation.importing import FORMATS, format_errors, read_import_file
from annotation.models import ModelVersion


class Command(BaseCommand):
    help = ("Create a project with a base model and a prompt file, and no labels, all or nothing: a bad "
            "setting or a bad line (reported with its number) creates nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--base", help="a registered base model's id or name (manage.py register_base)")
        parser.add_argument("--prompts", type=Path, help="a prompt file (JSONL, .gz accepted)")
        parser.add_argument("--format", choices=FORMATS, default="items")
        parser.add_argument("--k", type=int, default=4, help="responses per ranking task (2-9)")
        parser.add_argument("--overlap", type=int, default=1, help="labelers per task")
        parser.add_argument("--admin", help="username of the project's admin")
        parser.add_argument("--chat-template", action="store_true",
                            help="render prompts with the base's chat template (instruct models such as SmolLM2)")
        parser.add_argument("--max-new-tokens", type=int, default=64, help="response length (every stage)")

    def handle(self, *args, name, base, prompts, format, k, overlap, admin, chat_template, max_new_tokens,
               **options):
        bases = ModelVersion.objects.registered_bases()
        chosen = None
        if base:
            chosen = (bases.filter(pk=int(base)) if base.isdigit() else bases.filter(name=base)).first()
            if chosen is None:
                names = ", ".join(f"#{b.pk} {b.name!r}" for b in bases) or "none yet"
                raise CommandError(f"no registered base {base!r}; registered: {names}")
        user = None
        if admin:
            user = get_user_model().objects.filter(username=admin).first()
            if user is None:
                raise CommandError(f"no user {admin!r}")
        try:
            items, lines, left_out = read_import_file(prompts, fmt=format) if prompts else ([], [], 0)
            project, result = services.create_project(name=name, admin=user, base=chosen, prompts=items,
                                                      line_numbers=lines, k=k, overlap=overlap,
                                                      chat_template=chat_template, max_new_tokens=max_new_tokens)
        except APIException as exc:
            raise CommandError("nothing was created:\n" + "\n".join(format_errors(exc.detail))) from None
        self.stdout.write(f"created project #{project.pk} {project.name!r} with {len(result.created)} prompts "
                          f"({len(result.duplicates)} duplicates, {left_out} lines left out); base: "
                          f"{chosen.name if chosen else 'none yet'}")
