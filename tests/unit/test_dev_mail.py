"""``make dev``'s SMTP sink: a mail sent through the real SMTP adapter lands in a .eml file, listed at /_dev/mail."""

from __future__ import annotations

from pathlib import Path

from dev.jwt_issuer import DevIssuer
from dev.mail_sink import MailSink
from dev.stack import DEV_UNSUBSCRIBE_SECRET, build_dev_app, configure_environment
from shared.mail.port import EmailMessage
from shared.mail.smtp import SmtpMailer
from tests.smtp_sink import free_port


def test_the_sink_keeps_each_mail_and_the_dev_app_lists_it(tmp_path: Path) -> None:
    sink = MailSink(tmp_path / "mail", free_port()).start()
    try:
        mailer = SmtpMailer(host="127.0.0.1", port=sink.port, sender="dev@epox.localhost", starttls=False)
        mailer.send(EmailMessage(to="a@shop.test", subject="First", text="one", html="<p>one</p>"))
        mailer.send(EmailMessage(to="b@shop.test", subject="Second", text="two", html="<p>two</p>"))
        app = build_dev_app(DevIssuer(issuer="i", audience="a"), None, tmp_path, sink)
        listed = app.test_client().get("/_dev/mail").json
    finally:
        sink.stop()
    assert [(m["subject"], m["to"]) for m in listed] == [("Second", "b@shop.test"), ("First", "a@shop.test")]
    kept = Path(listed[0]["file"])
    assert kept.parent == tmp_path / "mail" and kept.suffix == ".eml"
    assert b"Subject: Second" in kept.read_bytes()


def test_the_stack_points_the_functions_at_the_sink() -> None:
    import os

    saved = dict(os.environ)
    try:
        values = configure_environment(8000, "127.0.0.1:8085", "http://127.0.0.1:9000", "s", "http://127.0.0.1:1", 2525)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert (values["SMTP_HOST"], values["SMTP_PORT"], values["SMTP_STARTTLS"]) == ("127.0.0.1", "2525", "false")
    assert values["MAIL_UNSUBSCRIBE_SECRET"] == DEV_UNSUBSCRIBE_SECRET
    assert values["PUBLIC_BASE_URL"] == "http://127.0.0.1:8000/notifications_api"
