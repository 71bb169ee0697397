"""/openapi.json: the cancel operation exactly as the AgentOS contract, and a schemathesis run over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tether import Agent
from tether.server import create_app
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

ERROR_SCHEMAS = {
    "BadRequestResponse": ("Bad request", "BAD_REQUEST"),
    "UnauthenticatedResponse": ("Unauthenticated access", "UNAUTHENTICATED"),
    "NotFoundResponse": ("Not found", "NOT_FOUND"),
    "ValidationErrorResponse": ("Validation error", "VALIDATION_ERROR"),
    "InternalServerErrorResponse": ("Internal server error", "INTERNAL_SERVER_ERROR"),
}


def make_app(path: Path, key: str | None = "k3y") -> Any:
    agent = Agent(name="Fuzz", description="Answers fast", model=ScriptedModel(["ok"]))
    return create_app([agent], storage=SqliteStorage(path), security_key=key)


def test_cancel_operation_matches_the_contract(tmp_path: Path) -> None:
    spec = make_app(tmp_path / "a.db").openapi()
    op = spec["paths"]["/agents/{agent_id}/runs/{run_id}/cancel"]["post"]
    assert (op["operationId"], op["tags"], op["summary"]) == (
        "cancel_agent_run",
        ["Agents"],
        "Cancel Agent Run",
    )
    assert op["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {"type": "http", "scheme": "bearer"}
    refs = {
        status: body["content"]["application/json"]["schema"].get("$ref", "").split("/")[-1]
        for status, body in op["responses"].items()
    }
    assert refs == {
        "200": "CancelResult",
        "400": "BadRequestResponse",
        "401": "UnauthenticatedResponse",
        "404": "NotFoundResponse",
        "422": "ValidationErrorResponse",
        "500": "InternalServerErrorResponse",
    }
    assert op["responses"]["404"]["description"] == "Agent not found"
    assert op["responses"]["500"]["description"] == "Failed to cancel run"
    for name, (detail, code) in ERROR_SCHEMAS.items():
        assert spec["components"]["schemas"][name] == {
            "properties": {
                "detail": {"type": "string", "title": "Detail", "description": "Error detail message"},
                "error_code": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "title": "Error Code",
                    "description": "Error code for categorization",
                },
            },
            "type": "object",
            "required": ["detail"],
            "title": name,
            "example": {"detail": detail, "error_code": code},
        }
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_background_runs_and_the_resume_routes_are_documented(tmp_path: Path) -> None:
    spec = make_app(tmp_path / "r.db").openapi()
    create = spec["paths"]["/agents/{agent_id}/runs"]["post"]
    assert create["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BackgroundRun"
    }
    background = create["requestBody"]["content"]["application/json"]["schema"]["properties"]["background"]
    assert (background["type"], background["default"]) == ("boolean", False)
    assert background["description"].startswith("The run goes on whatever happens to this request")
    resume = spec["paths"]["/agents/{agent_id}/runs/{run_id}/resume"]["post"]
    events = spec["paths"]["/agents/{agent_id}/runs/{run_id}/events"]["get"]
    assert (resume["operationId"], resume["summary"], resume["tags"]) == (
        "resume_agent_run",
        "Resume Agent Run",
        ["Agents"],
    )
    assert (events["operationId"], events["summary"]) == ("get_agent_run_events", "Agent Run Events")
    for op in (resume, events):
        assert op["responses"]["200"]["content"] == {"text/event-stream": {"schema": {"type": "string"}}}
        assert sorted(op["responses"]) == ["200", "401", "404", "422", "500"]
        assert op["responses"]["404"]["description"] == "Run not found"
        assert op["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/NotFoundResponse"
        }
    header = next(p for p in events["parameters"] if p["in"] == "header")
    assert (header["name"], header["schema"]["type"], header["schema"]["minimum"]) == (
        "Last-Event-ID",
        "integer",
        -1,
    )
    body = resume["requestBody"]
    assert body["required"] is False
    as_json = body["content"]["application/json"]["schema"]["properties"]["last_event_index"]
    as_form = body["content"]["application/x-www-form-urlencoded"]["schema"]["properties"]["last_event_index"]
    assert as_json["anyOf"] == [{"minimum": -1, "type": "integer"}, {"type": "null"}]
    assert (as_form["type"], as_form["minimum"], "anyOf" in as_form) == (
        "integer",
        -1,
        False,
    )  # forms: no null


def test_an_open_server_declares_no_security(tmp_path: Path) -> None:
    spec = make_app(tmp_path / "open.db", key=None).openapi()
    assert "security" not in spec["paths"]["/agents/{agent_id}/runs/{run_id}/cancel"]["post"]
    assert "securitySchemes" not in spec.get("components", {})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("key", [None, "k3y"])
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(
    tmp_path: Path, key: str | None
) -> None:
    # Driven directly, not through schemathesis' pytest plugin (which does not support pytest 9 yet).
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", make_app(tmp_path / "fuzz.db", key), headers=headers
    )
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: Any) -> None:
            case.call_and_validate(headers=headers)

        exercise()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert sorted(checked) == [
        "GET /agents",
        "GET /agents/{agent_id}",
        "GET /agents/{agent_id}/runs",
        "GET /agents/{agent_id}/runs/{run_id}",
        "GET /agents/{agent_id}/runs/{run_id}/events",
        "GET /health",
        "GET /sessions/{session_id}/runs",
        "POST /agents/{agent_id}/runs",
        "POST /agents/{agent_id}/runs/{run_id}/cancel",
        "POST /agents/{agent_id}/runs/{run_id}/resume",
    ]
