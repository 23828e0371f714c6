"""Email: the Mailer port, its SMTP adapter, templates and unsubscribe tokens."""
