"""The deploy smoke test (``python -m dev.smoke``) against every real function: public ones answer their
health route, and a worker that answers an unauthenticated caller is reported as public."""

from __future__ import annotations

from typing import Any

from dev.manifest import Invoker, load
from dev.smoke import main, run

BASE = "https://region-project.cloudfunctions.net"


def _through(stack: Any, *, iam: bool) -> Any:
    """GET through the served functions; with ``iam``, private entry points refuse callers without a
    token the way Cloud Run's invoker check does."""
    private = {entry.name for entry in load().entry_points if entry.invoker is not Invoker.ALL_USERS}

    def get(url: str) -> tuple[int, object]:
        assert url.startswith(BASE + "/")
        name, _, path = url[len(BASE) + 1 :].partition("/")
        if iam and name in private:
            return 403, None
        answer = stack.client(name).get("/" + path)
        return answer.status_code, answer.get_json(silent=True)

    return get


def test_every_entry_point_answers_and_only_public_ones_answer_strangers(stack: Any) -> None:
    checks = run(BASE, _through(stack, iam=True))
    assert len(checks) == len(load().entry_points)
    assert all(check.passed for check in checks), [check for check in checks if not check.passed]


def test_a_worker_reachable_without_a_token_fails_the_smoke_test(stack: Any) -> None:
    checks = {check.name: check for check in run(BASE, _through(stack, iam=False))}
    assert not checks["generate_tasks"].passed and "PUBLIC" in checks["generate_tasks"].detail
    assert checks["generate_api"].passed
    local = run(BASE, _through(stack, iam=False), expect_iam=False)  # the local stack: no IAM in front
    assert all(check.passed for check in local)


def test_an_unreachable_or_misconfigured_deployment_fails(stack: Any, capsys: Any) -> None:
    def broken(url: str) -> tuple[int, object]:
        if "/catalog_api/" in url:
            raise OSError("connection refused")
        if "/billing_api/" in url:
            return 500, {"title": "Configuration error", "detail": "STRIPE_API_KEY is missing"}
        status, body = _through(stack, iam=True)(url)
        return status, body

    checks = {check.name: check for check in run(BASE, broken)}
    assert "unreachable" in checks["catalog_api"].detail
    assert "STRIPE_API_KEY" in checks["billing_api"].detail
    assert sum(not check.passed for check in checks.values()) == 2
    assert main(["http://127.0.0.1:9", "--timeout", "2"]) == 1  # nothing listens there
    assert "0/" in capsys.readouterr().out
