"""The queue order on the slot (issue 13): each slot carries its task's done count, whether the task is open and
whether it is gold, so that a claim reads the first rows of one partial index (``slot_queue``) instead of
joining and sorting every open task."""

from django.db import migrations, models
from django.db.models import Exists, OuterRef, Subquery


def copy_queue_order_from_tasks(apps, schema_editor):
    """New columns start as a fresh task's (open, nothing done, not gold); only other tasks' slots change."""
    Task = apps.get_model("annotation", "Task")
    TaskSlot = apps.get_model("annotation", "TaskSlot")
    changed = Task.objects.exclude(status="open", done_count=0, is_gold=False).values("pk")
    task = Task.objects.filter(pk=OuterRef("task_id"))
    TaskSlot.objects.filter(task_id__in=changed).update(
        task_done_count=Subquery(task.values("done_count")[:1]),
        task_open=Exists(task.filter(status="open")),
        task_is_gold=Subquery(task.values("is_gold")[:1]),
    )


class Migration(migrations.Migration):

    dependencies = [
        ("annotation", "0005_review_gold_invitations_audit"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskslot",
            name="task_done_count",
            field=models.PositiveSmallIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="taskslot",
            name="task_is_gold",
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.AddField(
            model_name="taskslot",
            name="task_open",
            field=models.BooleanField(default=True, editable=False),
        ),
        migrations.RunPython(copy_queue_order_from_tasks, migrations.RunPython.noop, elidable=False),
        migrations.RemoveIndex(
            model_name="taskslot",
            name="claimable_slots",
        ),
        migrations.AddIndex(
            model_name="taskslot",
            index=models.Index(condition=models.Q(("status", "free"), ("task_open", True)),
                               fields=["project", "kind", "task_is_gold", "-task_done_count", "task", "index"],
                               name="slot_queue"),
        ),
        migrations.AddIndex(
            model_name="taskslot",
            index=models.Index(condition=models.Q(("status", "leased")), fields=["project", "kind", "lease_expires"],
                               name="slot_leases"),
        ),
    ]
