"""The OpenAPI schema and the browsable docs, served without any CDN."""
from __future__ import annotations


def test_the_openapi_schema_describes_every_endpoint(client_for, users):
    response = client_for("alice").get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ["/api/projects/{id}/next-task/", "/api/tasks/{id}/submit-ranking/", "/api/tasks/{id}/skip/",
                 "/api/prompts/bulk/", "/api/me/stats/", "/api/rounds/", "/api/model-versions/"]:
        assert path in schema["paths"], path


def test_the_docs_page_loads_swagger_from_our_own_static_files(client_for, users):
    client = client_for(None)
    client.force_login(users["alice"])
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html and "/static/drf_spectacular_sidecar/" in html
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html


def test_health_reports_the_standard_library_platform(client, db):
    body = client.get("/healthz").json()
    assert body["ok"] and body["platform_is_stdlib"] and body["platform_system"] == "Linux"
