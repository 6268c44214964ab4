from __future__ import annotations

from fastapi.testclient import TestClient


def test_every_error_response_is_declared(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    declared = {
        ("/embed", "post"): {"200", "400", "401", "404", "413", "422", "429", "500", "503"},
        ("/similarity", "post"): {"200", "400", "401", "404", "413", "422", "429", "500", "503"},
        ("/tokenize", "post"): {"200", "400", "401", "404", "413", "422", "500", "503"},
        ("/v1/embeddings", "post"): {"200", "400", "401", "404", "413", "422", "429", "500", "503"},
        ("/v1/models", "get"): {"200", "401", "500", "503"},
        ("/v1/models/{model_id}", "get"): {"200", "401", "404", "422", "500", "503"},
        ("/info", "get"): {"200", "401", "500", "503"},
        ("/health", "get"): {"200", "500", "503"},
    }
    for (path, method), statuses in declared.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == statuses, (path, responses.keys())
        for status in statuses - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_docs_work_without_a_network(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in page.text
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
    redoc = client.get("/redoc")
    assert "fonts.googleapis" not in redoc.text and "/docs-assets/redoc.standalone.js" in redoc.text
