"""Smoke-test a deployment: every entry point of the manifest answers, and only whom it should.

``python -m dev.smoke https://REGION-PROJECT.cloudfunctions.net`` (or ``make smoke BASE_URL=…``) calls
``GET <base>/<entry point>/health`` on each entry point of ``infra/functions.json``:

* a public one (``invoker: all_users``) must answer 200 ``{"status": "ok", "service": <its name>}``. The
  health route loads the function's settings first, so a missing or unsafe production setting shows
  here as a problem naming the variables, not at the first merchant request;
* a private one (workers and scheduled jobs, invokable only by the tasks service account) must refuse an
  unauthenticated caller (401/403 from Cloud Run's IAM), which proves it is not public.

``--no-iam`` drops the second expectation (the local stack, where nothing sits in front of the workers).
Exit status 0 when every check passed, 1 otherwise; one line per entry point either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dev.manifest import EntryPoint, Invoker, load

Get = Callable[[str], tuple[int, object]]  # url -> (status, parsed JSON body or None)


@dataclass(frozen=True)
class Check:
    name: str
    url: str
    passed: bool
    detail: str


def check_entry_point(entry: EntryPoint, base_url: str, get: Get, *, expect_iam: bool) -> Check:
    """One entry point's smoke check (see the module docstring)."""
    url = f"{base_url.rstrip('/')}/{entry.name}/health"
    try:
        status, body = get(url)
    except OSError as error:  # DNS, refused, TLS, timeout: httpx's transport errors are OSErrors too
        return Check(entry.name, url, False, f"unreachable: {type(error).__name__}: {error}")
    if entry.invoker is Invoker.ALL_USERS or not expect_iam:
        healthy = status == 200 and isinstance(body, dict) and body.get("service") == entry.name
        detail = "ok" if healthy else f"expected 200 from {entry.name}, got {status}: {_brief(body)}"
        return Check(entry.name, url, healthy, detail)
    refused = status in (401, 403)
    detail = "refuses unauthenticated callers" if refused else f"PUBLIC: answered {status} without a token"
    return Check(entry.name, url, refused, detail)


def run(base_url: str, get: Get, *, expect_iam: bool = True) -> list[Check]:
    """Check every entry point of the manifest against a deployment at ``base_url``."""
    return [check_entry_point(entry, base_url, get, expect_iam=expect_iam) for entry in load().entry_points]


def _brief(body: object) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return "no JSON body" if body is None else str(body)[:300]


def _http_get(timeout: float) -> Get:
    import httpx

    def get(url: str) -> tuple[int, object]:
        try:
            response = httpx.get(url, timeout=timeout, follow_redirects=False)
        except httpx.TransportError as error:
            raise OSError(str(error)) from error
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    return get


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("base_url", help="https://REGION-PROJECT.cloudfunctions.net (a Terraform output)")
    parser.add_argument("--no-iam", action="store_true", help="do not expect private functions to refuse callers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (a cold start included)")
    args = parser.parse_args(argv)
    checks = run(args.base_url, _http_get(args.timeout), expect_iam=not args.no_iam)
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<22} {check.detail}")
    failed = [check for check in checks if not check.passed]
    print(f"{len(checks) - len(failed)}/{len(checks)} entry points passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
