"""Django admin: how admins manage datasets, members and review status."""
from __future__ import annotations

from django.contrib import admin

from . import models


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


@admin.register(models.Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "done_count", "target_overlap", "round", "created"]
    list_filter = ["project", "kind", "status", "round"]
    list_select_related = ["project", "round"]
    raw_id_fields = ["prompt"]
    inlines = [TaskCandidateInline, TaskSlotInline]


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
    actions = ["accept", "reject"]

    @admin.action(description="Accept selected")
    def accept(self, request, queryset):
        queryset.update(review_status=models.ReviewStatus.ACCEPTED)

    @admin.action(description="Reject selected")
    def reject(self, request, queryset):
        queryset.update(review_status=models.ReviewStatus.REJECTED)


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
