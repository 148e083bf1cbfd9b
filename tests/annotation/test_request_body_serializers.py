"""Request-body serializers build their fields once per class, and validate exactly as DRF's plain ones do."""
from __future__ import annotations

import copy
import threading

import pytest
from rest_framework import serializers

from annotation.api import serializers as s


def _plain(cls):
    """The same declared fields on a plain DRF serializer (which deep-copies them for every instance)."""
    fields = {name: copy.deepcopy(field) for name, field in cls._declared_fields.items()}
    return type(f"Plain{cls.__name__}", (serializers.Serializer,), fields)


BODIES = [
    {"entries": [{"candidate": 1, "rank": 1}, {"candidate": 2, "rank": 1, "harmful": True, "quality": 7}],
     "seconds_spent": 3},
    {"entries": [{"candidate": "x", "rank": 0}], "seconds_spent": -1},
    {"entries": [{"candidate": 1, "rank": 1}, {"candidate": 2, "rank": 99, "quality": 8}], "seconds_spent": "a"},
    {"entries": "not a list", "comment": 5},
    {"entries": [{"candidate": 1, "rank": 1}] * 30, "seconds_spent": 1},
    {},
]


@pytest.mark.parametrize("body", BODIES)
def test_a_body_validates_as_with_drfs_plain_serializer(body):
    ours, plain = s.RankingSubmitSerializer(data=body), _plain(s.RankingSubmitSerializer)(data=body)
    assert ours.is_valid() == plain.is_valid()
    assert ours.errors == plain.errors
    if not ours.errors:
        assert ours.validated_data == plain.validated_data


def test_fields_are_built_once_per_class_and_bound_to_each_instance(monkeypatch):
    s.SkipSerializer(data={"reason": "x"}).is_valid()  # built
    copies = []
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: copies.append(a) or pytest.fail("deep-copied"))
    first, second = s.SkipSerializer(data={"reason": "a"}), s.SkipSerializer(data={"reason": ""})
    assert first.is_valid() and not second.is_valid()
    assert first.validated_data == {"reason": "a"} and "reason" in second.errors
    assert first.fields["reason"] is not second.fields["reason"]
    assert first.fields["reason"].parent is first and second.fields["reason"].parent is second
    assert not copies


def test_threads_validating_at_once_each_get_their_own_result():
    results, errors = {}, []

    def validate(i):
        try:
            for _ in range(50):
                body = {"entries": [{"candidate": i, "rank": 1}, {"candidate": i + 1, "rank": 1 + i % 2}],
                        "seconds_spent": i}
                serializer = s.RankingSubmitSerializer(data=body)
                assert serializer.is_valid(), serializer.errors
                results[i] = serializer.validated_data
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=validate, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, data in results.items():
        assert data["seconds_spent"] == i
        assert [(e["candidate"], e["rank"]) for e in data["entries"]] == [(i, 1), (i + 1, 1 + i % 2)]


@pytest.mark.parametrize("kwargs", [{"partial": True}, {"context": {"request": None}}, {"instance": object()}])
def test_anything_but_a_request_body_is_refused(kwargs):
    with pytest.raises(TypeError, match="request bodies"):
        s.SkipSerializer(data={"reason": "x"}, **kwargs)
