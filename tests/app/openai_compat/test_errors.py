"""Each status the API answers makes the openai SDK raise its matching exception class."""

from __future__ import annotations

from typing import NoReturn

import openai
import pytest

from app.auth import create_key
from app.failures import APIError, permission_denied, rate_limited, unauthorized
from tests.app.conftest import app_of
from tests.app.openai_compat.sdk import Sdk, sdk_client


def test_a_bad_key_is_an_authentication_error(sdk: Sdk) -> None:
    app = app_of(sdk.api.client)
    app.state.keys.cache_seconds = 0
    with app.state.sessionmaker() as session:
        _, key = create_key(session, "acme")
        session.commit()
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.client.models.list()  # the fixture's key is not one of the project's
    assert refused.value.code == "invalid_api_key"
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    with sdk_client(sdk.base_url, api_key=key) as good:
        assert any(m.id == "tiny-llama" for m in good.models.list())


@pytest.mark.parametrize(
    ("error", "exception", "status"),
    [
        (unauthorized("no key"), openai.AuthenticationError, 401),
        (permission_denied("not yours", param="model"), openai.PermissionDeniedError, 403),
        (APIError(422, "cannot process", param="x"), openai.UnprocessableEntityError, 422),
        (rate_limited("slow down", retry_after_seconds=1), openai.RateLimitError, 429),
        (APIError(503, "busy", code="inference_unavailable"), openai.InternalServerError, 503),
    ],
)
def test_every_status_maps_to_the_sdk_class(
    sdk: Sdk, error: APIError, exception: type[openai.APIStatusError], status: int
) -> None:
    # the errors the API will raise for quotas, projects and limits, through a route of
    # this test: what is tested is the body and headers that app/errors.py writes
    def fail() -> NoReturn:
        raise error

    app_of(sdk.api.client).add_api_route(
        "/v1/test-error", fail, methods=["GET"], response_model=None
    )
    with pytest.raises(exception) as raised:
        sdk.client.get("/test-error", cast_to=object)
    assert raised.value.status_code == status
    assert raised.value.body == {  # the SDK's .body is the "error" object
        "message": error.message,
        "type": raised.value.type,
        "param": error.param,
        "code": error.code,
    }
    assert (raised.value.param, raised.value.code) == (error.param, error.code)
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "1"


def test_a_bug_is_a_500_with_an_openai_body(sdk: Sdk) -> None:
    def crash() -> NoReturn:
        raise ZeroDivisionError("boom")

    app_of(sdk.api.client).add_api_route(
        "/v1/test-crash", crash, methods=["GET"], response_model=None
    )
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.client.get("/test-crash", cast_to=object)
    assert raised.value.status_code == 500
    assert raised.value.type == "server_error"
    assert "ZeroDivisionError" in raised.value.message


def test_unknown_route_and_bad_json(sdk: Sdk) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.client.get("/nowhere", cast_to=object)
    assert "/v1" in missing.value.message
    response = sdk.api.client.post(
        "/v1/fine_tuning/jobs",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
