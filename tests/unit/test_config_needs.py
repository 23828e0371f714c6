"""Settings per function: each entry point declares the settings groups it uses, and in production the
guard demands those and nothing else (a function that never calls Stripe needs no Stripe key)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings, get_settings
from shared.errors import ConfigurationError
from shared.http.app import Access, HttpApp, NoBody, NoQuery, RequestContext
from shared.needs import ALL_NEEDS, Need, required_variables
from tests.unit.test_config import PRODUCTION

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = (
    "catalog",
    "credits",
    "generate",
    "edit",
    "billing",
    "stripe_webhook",
    "notifications",
    "store_oauth",
    "store_webhook",
    "sync_back",
    "video",
)

# One valid production value per variable a group may demand: the full production set's, plus the Gemini
# key (that set uses Vertex instead) and an entry point of no particular function.
VALUES = PRODUCTION | {"FUNCTION_TARGET": "the_entry_point", "GEMINI_API_KEY": "gemini-key"}

# What each deployed function demands in production: the contract the README's table states.
EXPECTED = {
    "catalog_api": {Need.AUTH, Need.R2, Need.TASK_QUEUE},
    "catalog_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE},
    "credits_api": {Need.AUTH, Need.TASK_QUEUE},
    "credits_jobs": {Need.TASK_CALLS, Need.TASK_QUEUE},
    "generate_api": {Need.AUTH, Need.R2, Need.TASK_QUEUE, Need.GEMINI},
    "generate_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE, Need.GEMINI},
    "edit_api": {Need.AUTH, Need.R2, Need.TASK_QUEUE},
    "edit_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE, Need.GEMINI},
    "billing_api": {Need.AUTH, Need.STRIPE, Need.BILLING_PAGES},
    "billing_jobs": {Need.TASK_CALLS, Need.TASK_QUEUE},
    "stripe_webhook": {Need.STRIPE, Need.STRIPE_WEBHOOK, Need.TASK_QUEUE},
    "notifications_api": {Need.AUTH, Need.MAIL, Need.TASK_QUEUE},
    "notifications_tasks": {Need.TASK_CALLS, Need.TASK_QUEUE, Need.MAIL},
    "store_oauth": {Need.AUTH, Need.R2, Need.TASK_QUEUE, Need.STORE_CREDENTIALS, Need.STORES},
    "store_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE, Need.STORE_CREDENTIALS, Need.STORES},
    "store_webhook": {Need.TASK_QUEUE, Need.STORE_CREDENTIALS, Need.STORES},
    "sync_api": {Need.AUTH, Need.R2, Need.TASK_QUEUE, Need.STORE_CREDENTIALS, Need.STORES},
    "sync_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE, Need.STORE_CREDENTIALS, Need.STORES},
    "video_api": {Need.AUTH, Need.R2, Need.TASK_QUEUE, Need.GEMINI},
    "video_tasks": {Need.TASK_CALLS, Need.R2, Need.TASK_QUEUE, Need.GEMINI},
}


def _entry_points() -> dict[str, HttpApp]:
    apps: dict[str, HttpApp] = {}
    for folder in FOLDERS:
        module = importlib.import_module(f"functions.{folder}.main")
        apps.update({value.service: value for value in vars(module).values() if isinstance(value, HttpApp)})
    return apps


APPS = _entry_points()
CASES = [(name, variable) for name in sorted(APPS) for variable in required_variables(APPS[name].needs)]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A production environment with nothing set but EPOX_ENV."""
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    monkeypatch.setenv("EPOX_ENV", "production")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _set_only(env: pytest.MonkeyPatch, needs: frozenset[Need]) -> list[str]:
    names = required_variables(needs)
    for name in names:
        env.setenv(name, VALUES[name])
    return names


def test_every_entry_point_declares_what_it_uses() -> None:
    assert {name: set(app.needs) for name, app in APPS.items()} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_function_starts_with_only_its_own_settings(env: pytest.MonkeyPatch, name: str) -> None:
    needs = APPS[name].needs
    _set_only(env, needs)
    settings = get_settings(needs)
    assert settings.is_production
    if needs != ALL_NEEDS:
        # The same environment would not do for a function that needs everything.
        get_settings.cache_clear()
        with pytest.raises(ConfigurationError):
            get_settings()


@pytest.mark.parametrize(("name", "variable"), CASES)
def test_a_missing_setting_of_a_function_is_named(env: pytest.MonkeyPatch, name: str, variable: str) -> None:
    needs = APPS[name].needs
    _set_only(env, needs)
    env.delenv(variable)
    with pytest.raises(ConfigurationError, match=variable) as caught:
        get_settings(needs)
    assert str(caught.value).startswith("EPOX_ENV=production refuses to start")


def test_no_stripe_key_is_demanded_where_stripe_is_never_called(env: pytest.MonkeyPatch) -> None:
    needs = APPS["generate_tasks"].needs
    _set_only(env, needs)
    settings = get_settings(needs)
    assert settings.stripe_api_key.get_secret_value() == ""
    assert not settings.stripe_price_ids


def test_vertex_replaces_the_gemini_key(env: pytest.MonkeyPatch) -> None:
    needs = APPS["generate_api"].needs
    _set_only(env, needs)
    env.delenv("GEMINI_API_KEY")
    env.setenv("GEMINI_USE_VERTEX", "true")
    assert get_settings(needs).gemini_use_vertex


def test_development_switches_are_refused_whatever_a_function_needs(env: pytest.MonkeyPatch) -> None:
    needs = APPS["credits_api"].needs
    _set_only(env, needs)
    env.setenv("STRIPE_API_BASE", "http://127.0.0.1:9999")
    env.setenv("BILLING_SUCCESS_URL", "http://localhost:3000/billing")  # set, so checked though unused
    with pytest.raises(ConfigurationError) as caught:
        get_settings(needs)
    assert "STRIPE_API_BASE" in str(caught.value)
    assert "BILLING_SUCCESS_URL" in str(caught.value)


def test_an_app_needs_auth_for_user_routes_and_task_credentials_for_task_routes() -> None:
    app = HttpApp("unit_api", needs=(Need.R2,))
    assert app.needs == {Need.R2}  # /health is public

    def handler(ctx: RequestContext[NoBody, NoQuery]) -> None:
        return None

    app.get("/mine", access=Access.USER)(handler)
    assert app.needs == {Need.R2, Need.AUTH}
    app.post("/jobs/run", access=Access.SCHEDULER)(handler)
    assert app.needs == {Need.R2, Need.AUTH, Need.TASK_CALLS}


def test_the_readme_table_lists_what_each_function_demands() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ((?:`[A-Z0-9_]+`(?:, )?)+) \|", readme, flags=re.MULTILINE))
    documented = {name: sorted(re.findall(r"`([A-Z0-9_]+)`", rows.get(name, ""))) for name in APPS}
    assert documented == {name: required_variables(app.needs) for name, app in APPS.items()}


@pytest.mark.parametrize("complete", [True, False])
def test_the_serving_entry_point_hands_its_needs_to_the_platform(env: pytest.MonkeyPatch, complete: bool) -> None:
    from flask import Flask, request

    from shared.platform import get_platform, set_platform

    env.setattr("shared.logging._configured", True)  # the platform would replace pytest's log handlers
    app = APPS["stripe_webhook"]
    _set_only(env, app.needs)
    if not complete:
        env.delenv("STRIPE_WEBHOOK_SECRET")
    set_platform(None)
    try:
        with Flask("needs").test_request_context("/health"):
            response = app.handle(request)
        if complete:  # no Auth, R2, Cloud Tasks or Gemini settings, and the function starts
            assert response.status_code == 200, response.get_data(as_text=True)
            assert get_platform().settings.is_production
        else:  # refused at the first request, as before
            assert response.status_code == 500
    finally:
        set_platform(None)
