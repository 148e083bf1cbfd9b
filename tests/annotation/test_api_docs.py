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


def test_every_operation_documents_its_errors_in_the_one_error_shape(client_for):
    schema = client_for("sam").get("/api/schema/?format=json").json()
    assert schema["components"]["schemas"]["Error"]["required"] == ["status", "code", "message", "fields"]
    operations = [(path, method, op) for path, item in schema["paths"].items() if path != "/api/schema/"
                  for method, op in item.items() if isinstance(op, dict) and "responses" in op]
    assert len(operations) > 40
    for path, method, op in operations:
        for code in ("400", "401", "403", "404", "409", "429"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}, (method, path, code)
