from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_delete


def _free_leases_before_user_delete(sender, instance, **kwargs) -> None:
    from annotation import services

    services.free_leases_of(user=instance)


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        # A user who holds leases can be deleted (from the admin, or by a script): the leases are freed
        # first. Users with labels cannot be deleted at all: their rankings and demonstrations PROTECT them.
        pre_delete.connect(_free_leases_before_user_delete, sender=settings.AUTH_USER_MODEL,
                           dispatch_uid="annotation.free_leases_before_user_delete")
