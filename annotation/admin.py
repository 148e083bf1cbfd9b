"""Django admin: how admins manage datasets, members and review status."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from rest_framework.exceptions import APIException, ValidationError

from . import gold, models, reviews


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "k", "overlap", "lease_seconds", "demonstrations_enabled", "rankings_enabled",
                    "prompt_writing_enabled", "created"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "short_text", "source", "language", "split", "created"]
    list_filter = ["project", "source", "split", "language"]
    search_fields = ["text", "content_hash"]
    readonly_fields = ["split", "content_hash", "client_token", "created"]
    list_select_related = ["project"]
    raw_id_fields = ["author"]

    @admin.display(description="text")
    def short_text(self, prompt):
        return prompt.text[:80]


@admin.register(models.Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt_id", "origin", "model_version", "created"]
    list_filter = ["origin", "prompt__project"]
    search_fields = ["text"]
    raw_id_fields = ["prompt", "model_version"]


class TaskCandidateInline(admin.TabularInline):
    model = models.TaskCandidate
    extra = 0
    raw_id_fields = ["candidate"]


class TaskSlotInline(admin.TabularInline):
    model = models.TaskSlot
    extra = 0
    fields = ["index", "status", "labeler", "leased_at", "lease_expires"]
    readonly_fields = fields
    can_delete = False


class TaskAdminForm(forms.ModelForm):
    """Checks a gold answer as ``gold.mark_gold`` will: {candidate id: rank}, every candidate, ranks from 1."""

    class Meta:
        model = models.Task
        exclude = ["candidates"]  # shown and edited in TaskCandidateInline (a through model)

    def clean(self):
        data = super().clean()
        if data.get("is_gold") and self.instance.pk is not None:
            if data.get("status") == models.Task.Status.CANCELLED:
                self.add_error("is_gold", "a cancelled task cannot be gold")
            try:
                data["gold_ranks"] = gold.clean_gold_ranks(self.instance, data.get("gold_ranks") or {})
            except ValidationError as exc:
                self.add_error("gold_ranks", [str(message) for message in exc.detail["gold_ranks"]])
        return data


@admin.register(models.Task)
class TaskAdmin(admin.ModelAdmin):
    form = TaskAdminForm
    list_display = ["id", "project", "kind", "status", "is_gold", "done_count", "target_overlap", "round", "created"]
    list_filter = ["project", "kind", "status", "is_gold", "round"]
    list_select_related = ["project", "round"]
    raw_id_fields = ["prompt"]
    inlines = [TaskCandidateInline, TaskSlotInline]
    actions = ["unmark_gold"]

    def get_readonly_fields(self, request, obj=None):
        return ["is_gold", "gold_ranks"] if obj is None else []  # a task is marked gold once it has candidates

    def save_model(self, request, obj, form, change):
        """Gold changes go through ``gold.mark_gold`` / ``unmark_gold`` (slots for every labeler, audited);
        the rest of the form is saved as usual first."""
        if not change or not {"is_gold", "gold_ranks"} & set(form.changed_data):
            super().save_model(request, obj, form, change)
            models.TaskSlot.objects.filter(task=obj).sync_queue_order()  # a status or count edit moves it in the queue
            return
        wanted, answer = obj.is_gold, obj.gold_ranks
        obj.is_gold, obj.gold_ranks = form.initial.get("is_gold", False), form.initial.get("gold_ranks")
        super().save_model(request, obj, form, change)
        if wanted:
            gold.mark_gold(admin=request.user, task=obj, gold_ranks=answer)
        else:
            gold.unmark_gold(admin=request.user, task=obj)
        obj.refresh_from_db()

    @admin.action(description="Make selected gold tasks ordinary again")
    def unmark_gold(self, request, queryset):
        for task in queryset.filter(is_gold=True):
            gold.unmark_gold(admin=request.user, task=task)


class RankingEntryInline(admin.TabularInline):
    model = models.RankingEntry
    extra = 0
    raw_id_fields = ["candidate"]


@admin.register(models.Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ["id", "task_id", "labeler", "review_status", "seconds_spent", "created"]
    list_filter = ["review_status", "task__project"]
    list_select_related = ["labeler"]
    raw_id_fields = ["task", "slot", "labeler"]
    inlines = [RankingEntryInline]
    actions = ["accept"]

    # Labels are read-only here: decisions go through the review rules (annotation/reviews.py: who may
    # decide, a reason to reject, the audit log); rejecting, with its reason, is done in the review queue.
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Accept selected (audited; reject with a reason in the review queue)",
                  permissions=["view"])
    def accept(self, request, queryset):
        done, refused = 0, []
        for label in queryset:
            try:
                reviews.review_label(reviewer=request.user, label=label, decision="accept",
                                     reason="accepted in the Django admin")
                done += 1
            except APIException as exc:
                refused.append(f"#{label.pk}: {exc.detail}")
        self.message_user(request, f"Accepted {done}." + (f" Refused: {'; '.join(refused)}" if refused else ""),
                          level=messages.WARNING if refused else messages.SUCCESS)


@admin.register(models.Demonstration)
class DemonstrationAdmin(RankingAdmin):
    list_display = ["id", "task_id", "author", "review_status", "seconds_spent", "created"]
    list_select_related = ["author"]
    raw_id_fields = ["task", "slot", "author", "prompt"]
    search_fields = ["text"]
    inlines = []


@admin.register(models.Skip)
class SkipAdmin(admin.ModelAdmin):
    list_display = ["id", "task_id", "labeler", "reason", "created"]
    list_filter = ["task__project"]
    raw_id_fields = ["task", "labeler"]


@admin.register(models.Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "status", "created"]
    list_filter = ["project", "status"]


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "stage", "name", "parent", "round", "created"]
    list_filter = ["project", "stage"]
    raw_id_fields = ["parent", "round"]
