"""Whatever a client sends as body, query or path, the answer is a 4xx with the error schema, never a 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tether import Agent
from tether.server._errors import CODES
from tether.testing import ScriptedModel

RUNS = "/agents/quick/runs"
CANCEL = "/agents/quick/runs/r-none/cancel"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
DEEP = b"[" * 1000 + b"]" * 1000
NOT_JSON = "body is not valid JSON: "
TOO_DEEP = "body is not valid JSON: nested too deeply"
BIG_INT = NOT_JSON + "Exceeds the limit (4300 digits) for integer string conversion"  # + Python's advice


@pytest.fixture
def client(make_app: Callable[..., FastAPI], caplog: pytest.LogCaptureFixture) -> Iterator[TestClient]:
    """A client on an app serving ``quick``; the test fails if the server logged an error."""
    agent = Agent(name="Quick", description="Answers at once", model=ScriptedModel(["ok"]))
    with TestClient(make_app([agent]), raise_server_exceptions=False) as test_client:
        yield test_client
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def post(client: TestClient, path: str, body: bytes, content_type: str | None) -> tuple[int, Any]:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=body, headers=headers)
    if response.headers["content-type"].startswith("text/event-stream"):
        return response.status_code, "stream"
    return response.status_code, response.json()


def problem(status: int, detail: str) -> tuple[int, dict[str, str]]:
    return status, {"detail": detail, "error_code": CODES[status]}


def check(answer: tuple[int, Any], expected: tuple[int, dict[str, str]]) -> None:
    """``answer == expected``; a detail from Python's own message (BIG_INT) only has to start alike."""
    if expected[1]["detail"] == BIG_INT:
        assert answer[0] == expected[0] and answer[1]["error_code"] == expected[1]["error_code"]
        assert answer[1]["detail"].startswith(BIG_INT), answer
    else:
        assert answer == expected


# (body, content type) -> (answer of POST /runs, answer of POST /cancel for an unknown run)
REFUSED = {
    "nested 1,000 deep": ((DEEP, JSON), problem(422, TOO_DEEP), problem(422, TOO_DEEP)),
    "deep inside an object": (
        (b'{"message": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
        problem(422, TOO_DEEP),
        problem(422, TOO_DEEP),
    ),
    "deep but within the stack, as a field": (
        (b'{"message": ' + b"[" * 200 + b"]" * 200 + b"}", JSON),
        problem(422, "message: Input should be a valid string"),
        problem(422, "message: Extra inputs are not permitted"),
    ),
    "an integer of 5,000 digits": (
        (b'{"message": "hi", "x": ' + b"1" * 5000 + b"}", JSON),
        problem(422, BIG_INT),
        problem(422, BIG_INT),
    ),
    "1e999 for a boolean and a number": (
        (b'{"stream": 1e999, "grace": 1e999}', JSON),
        problem(422, "message: Field required; stream: Input should be a valid boolean"),
        problem(
            422, "grace: Input should be less than or equal to 3600; stream: Extra inputs are not permitted"
        ),
    ),
    "NaN for a number": (
        (b'{"message": "hi", "stream": NaN}', JSON),
        problem(422, "stream: Input should be a valid boolean"),
        problem(422, "message: Extra inputs are not permitted; stream: Extra inputs are not permitted"),
    ),
    "invalid UTF-8": (
        (b'{"message": "\xff\xfe"}', JSON),
        problem(422, NOT_JSON + "'utf-8' codec can't decode byte 0xff in position 13: invalid start byte"),
        problem(422, NOT_JSON + "'utf-8' codec can't decode byte 0xff in position 13: invalid start byte"),
    ),
    "a raw NUL byte in a string": (
        (b'{"message": "a\x00b"}', JSON),
        problem(422, NOT_JSON + "Invalid control character at: line 1 column 15 (char 14)"),
        problem(422, NOT_JSON + "Invalid control character at: line 1 column 15 (char 14)"),
    ),
    "a lone surrogate": (
        (b'{"message": "a\\ud83d", "reason": "\\udc00"}', JSON),
        problem(422, "message: Input should be a valid string, unable to parse raw data as a unicode string"),
        problem(
            422,
            "reason: Input should be a valid string, unable to parse raw data as a unicode string; "
            "message: Extra inputs are not permitted",
        ),
    ),
    "not an object": ((b"[1, 2]", JSON), problem(422, "body must be a JSON object"), None),
    "multipart without a boundary": (
        (b"--x\r\nfoo", "multipart/form-data"),
        problem(422, "body is not a valid form: 400: Missing boundary in multipart."),
        problem(422, "body is not a valid form: 400: Missing boundary in multipart."),
    ),
    "no content type": ((b"message=hi", None), None, None),
}
ACCEPTED = {  # body, content type, the run id it asks for
    "duplicate keys: the last wins": (
        b'{"run_id": "a", "run_id": "dup-last", "message": "x", "stream": false}',
        JSON,
        "dup-last",
    ),
    "a UTF-8 byte order mark": (
        b'\xef\xbb\xbf{"message": "x", "stream": false, "run_id": "bom"}',
        JSON,
        "bom",
    ),
    "UTF-16": ('{"message": "x", "stream": false, "run_id": "utf16"}'.encode("utf-16"), JSON, "utf16"),
    "an escaped NUL": (b'{"message": "a\\u0000b", "stream": false, "run_id": "nul"}', JSON, "nul"),
    "a form with bytes that are not UTF-8": (b"message=%ff%fe&stream=false&run_id=f-bytes", FORM, "f-bytes"),
    "a form with a NUL": (b"message=a%00b&stream=false&run_id=f-nul", FORM, "f-nul"),
}
UNSUPPORTED = (
    "Content-Type must be application/json, application/x-www-form-urlencoded or multipart/form-data"
)


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_body_is_a_422_on_both_post_routes(client: TestClient, case: str) -> None:
    (body, content_type), runs, cancel = REFUSED[case]
    check(post(client, RUNS, body, content_type), runs or problem(422, UNSUPPORTED))
    check(post(client, CANCEL, body, content_type), cancel or runs or problem(422, UNSUPPORTED))


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_odd_but_valid_bodies_start_a_run(client: TestClient, case: str) -> None:
    body, content_type, run_id = ACCEPTED[case]
    status, answer = post(client, RUNS, body, content_type)
    assert status == 200, answer
    assert (answer["run_id"], answer["status"], answer["content"]) == (run_id, "COMPLETED", "ok")


@pytest.mark.parametrize("boundary", ["c637e12e2b1a998d80d1b087531af51c", '"a b"'])
def test_a_multipart_body_with_no_parts_is_a_form_with_no_fields(client: TestClient, boundary: str) -> None:
    """What a browser sends for a form whose only field is an unchecked checkbox (found by schemathesis
    on python-multipart 0.0.9, which refuses it; newer versions read no fields)."""
    body = b"--" + boundary.strip('"').encode() + b"--\r\n"
    content_type = f"multipart/form-data; boundary={boundary}"
    check(post(client, RUNS, body, content_type), problem(422, "message: Field required"))
    check(post(client, CANCEL, body, content_type), problem(404, "Run not found"))
    other = f"multipart/form-data; boundary={boundary}x"
    status, answer = post(client, CANCEL, body, other)
    assert status == 422 and answer["detail"].startswith("body is not a valid form: "), answer


@pytest.mark.parametrize(
    ("boundary", "body", "no_fields"),
    [
        ("b; boundary=c", b"--c--\r\n", True),  # the parser reads the last boundary parameter ...
        ("b; boundary=c", b"--b--\r\n", False),  # ... so this body is not a closing delimiter
        ('b"', b'--b"--\r\n', True),  # an unquoted boundary keeps its quote
        ("b", b"--b--\r\nan epilogue", True),  # RFC 2046: an epilogue may follow the closing delimiter
        ("b", b"a preamble\r\n--b--\r\n", False),
    ],
    ids=["twice-last", "twice-first", "quote-in-token", "epilogue", "preamble"],
)
def test_a_body_with_no_parts_is_read_with_the_boundary_the_parser_reads(
    client: TestClient, boundary: str, body: bytes, no_fields: bool
) -> None:
    """Whatever python-multipart version reads it, alike (0.0.9 refuses every body with no parts)."""
    content_type = f"multipart/form-data; boundary={boundary}"
    status, answer = post(client, CANCEL, body, content_type)
    if no_fields:
        assert (status, answer) == problem(404, "Run not found")
    else:
        assert status == 422 and answer["detail"].startswith("body is not a valid form: "), answer


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{CANCEL}?wait=nan", "query.wait: Input should be less than or equal to 60"),
        (f"{CANCEL}?wait=1e999", "query.wait: Input should be less than or equal to 60"),
        (
            f"{CANCEL}?wait=%ff",
            "query.wait: Input should be a valid number, unable to parse string as a number",
        ),
        (
            f"{RUNS}?limit={'9' * 5000}",
            "query.limit: Unable to parse input string as an integer, exceeded maximum size",
        ),
        (
            f"{RUNS}?status=%00",
            "query.status: Input should be 'PENDING', 'RUNNING', 'COMPLETED', 'CANCELLED' or 'ERROR'",
        ),
        ("/agents/%ff", "path.agent_id: String should match pattern '^[A-Za-z0-9._:-]{1,128}$'"),
        (f"/agents/{'a' * 10_000}", "path.agent_id: String should match pattern '^[A-Za-z0-9._:-]{1,128}$'"),
        ("/sessions/%00/runs", "path.session_id: String should match pattern '^[A-Za-z0-9._:-]{1,128}$'"),
    ],
)
def test_a_bad_query_or_path_is_a_422(client: TestClient, path: str, expected: str) -> None:
    method = "POST" if "/cancel" in path else "GET"
    response = client.request(method, path)
    assert (response.status_code, response.json()) == problem(422, expected)


def deep(depth: int, close: bool) -> bytes:
    return b'{"message": ' * (depth % 3 == 0) + b"[" * depth + b"]" * (depth if close else depth // 2)


FIELD_NAMES = ["message", "stream", "run_id", "session_id", "user_id", "reason", "mode", "grace", "x"]
NAMES = st.sampled_from(FIELD_NAMES)  # the fields of both routes, and one of neither
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.dictionaries(NAMES, JSON_VALUES, max_size=5)
FORM_FIELDS = st.dictionaries(
    NAMES,
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),  # urlencode needs UTF-8
    max_size=5,
)
BODIES = st.one_of(
    FIELDS.map(lambda fields: json.dumps(fields).encode()),  # lone surrogates are escaped as \udXXX
    st.builds(deep, st.integers(1, 3000), st.booleans()),
    st.integers(1, 6000).map(lambda digits: b'{"message": "x", "n": ' + b"7" * digits + b"}"),
    FORM_FIELDS.map(lambda fields: urlencode(fields).encode()),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
CONTENT_TYPES = st.sampled_from(
    [
        JSON,
        "application/json; charset=utf-8",
        FORM,
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "text/plain",
        None,
    ]
)


def test_whatever_the_body_the_answer_is_a_4xx_with_the_error_schema(client: TestClient) -> None:
    @given(body=BODIES, content_type=CONTENT_TYPES, cancel=st.booleans())
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def exercise(body: bytes, content_type: str | None, cancel: bool) -> None:
        status, answer = post(client, CANCEL if cancel else RUNS, body, content_type)
        allowed = {404, 422} if cancel else {200, 400, 422}
        assert status in allowed, (status, answer)
        if status != 200:
            assert set(answer) == {"detail", "error_code"} and answer["error_code"] == CODES[status]
            assert isinstance(answer["detail"], str) and answer["detail"]

    exercise()
