from __future__ import annotations

import django_filters

from ..models import Demonstration, ModelVersion, Prompt, Ranking, Round, Task, TrainingJob


class PromptFilter(django_filters.FilterSet):
    class Meta:
        model = Prompt
        fields = ["project", "source", "split", "language", "author"]


class TaskFilter(django_filters.FilterSet):
    class Meta:
        model = Task
        fields = ["project", "kind", "status", "round", "prompt"]


class RankingFilter(django_filters.FilterSet):
    project = django_filters.NumberFilter(field_name="task__project")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")

    class Meta:
        model = Ranking
        fields = ["task", "labeler", "review_status"]


class DemonstrationFilter(django_filters.FilterSet):
    project = django_filters.NumberFilter(field_name="task__project")
    created_after = django_filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")

    class Meta:
        model = Demonstration
        fields = ["task", "prompt", "author", "review_status"]


class RoundFilter(django_filters.FilterSet):
    class Meta:
        model = Round
        fields = ["project", "status"]


class ModelVersionFilter(django_filters.FilterSet):
    class Meta:
        model = ModelVersion
        fields = ["project", "stage", "round"]


class TrainingJobFilter(django_filters.FilterSet):
    class Meta:
        model = TrainingJob
        fields = ["project", "round", "stage", "status"]
