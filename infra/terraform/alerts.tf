# Log-based alerts on what needs a person. The functions log one JSON object per line (shared/logging.py):
# severity, message, logger and structured fields land in jsonPayload. Each filter matches a line the code
# writes (tests/unit/test_terraform.py holds them to it).

locals {
  function_logs = "resource.type=\"cloud_run_revision\""
  log_alerts = {
    ledger-drift = {
      title         = "Ledger drift"
      severity      = "CRITICAL"
      resource_type = "cloud_run_revision"
      # functions/credits/main.py: /jobs/verify-balances logs CRITICAL "ledger drift for client …" with ledger_drift fields.
      filter = "${local.function_logs} AND severity=CRITICAL AND jsonPayload.ledger_drift.client_id:*"
      documentation = join("\n", [
        "A client's balance document disagrees with its ledger entries (found by `/jobs/verify-balances` on credits_jobs): a money bug.",
        "Read the log line's `ledger_drift.problems`; fix the code and the balance before the client spends against it.",
      ])
    }
    scheduled-job-client-failures = {
      title         = "Scheduled job failed for a client"
      severity      = "ERROR"
      resource_type = "cloud_run_revision"
      # shared/scheduled.py: a client that fails in a scheduled job is logged at ERROR with job_failure fields.
      filter = "${local.function_logs} AND severity>=ERROR AND jsonPayload.job_failure.job:*"
      documentation = join("\n", [
        "A scheduled job could not process a client (`job_failure`: job, step, client id, code); the others were processed.",
        "The run answered 500 `scheduled_job_incomplete` and Cloud Scheduler retries it; a client that keeps failing fails every run until repaired.",
      ])
    }
    scheduled-job-attempts = {
      title         = "Scheduled job attempt failed"
      severity      = "ERROR"
      resource_type = "cloud_scheduler_job"
      # Cloud Scheduler logs every attempt that does not get a 2xx (scheduled_job_incomplete, timeouts, auth) at ERROR.
      filter = "resource.type=\"cloud_scheduler_job\" AND severity>=ERROR"
      documentation = join("\n", [
        "A Cloud Scheduler job's call did not succeed: a 500 `scheduled_job_incomplete` (see the job_failure alert), a timeout, or a 401/403 (OIDC audience or invoker).",
        "Every job is idempotent: its retries redo only what failed.",
      ])
    }
    parked-events = {
      title         = "Domain event delivery parked"
      severity      = "ERROR"
      resource_type = "cloud_run_revision"
      # shared/events/relay.py: on the queue's last attempt a failing consumer's delivery is parked and logged.
      filter = "${local.function_logs} AND severity>=ERROR AND jsonPayload.logger=\"epox.events\" AND jsonPayload.message=~\"^parked \""
      documentation = join("\n", [
        "An outbox event's consumer (notifications, auto-sync, outbound webhooks) failed on every attempt and its delivery was parked.",
        "Read the reason in the log line; the parked delivery stays in Firestore for a replay once fixed.",
      ])
    }
    abandoned-store-webhooks = {
      title         = "Store webhook abandoned"
      severity      = "ERROR"
      resource_type = "cloud_run_revision"
      # shared/stores/keeping.py: on the queue's last attempt a webhook the store kept refusing is abandoned and logged.
      filter = "${local.function_logs} AND severity>=ERROR AND jsonPayload.store_webhook_abandoned.shop:*"
      documentation = join("\n", [
        "A Shopify or WooCommerce webhook could not be worked: the store answered 429/5xx on every attempt (`store_webhook_abandoned`: shop, topic, product).",
        "The hourly `/jobs/reconcile-stores` and the product's next webhook repair the mirror; many at once mean the store or our credentials are down.",
      ])
    }
    quarantined-stripe-events = {
      title         = "Stripe event quarantined"
      severity      = "ERROR"
      resource_type = "cloud_run_revision"
      # shared/billing/deadletters.py: a poison Stripe event is dead-lettered and logged.
      filter = "${local.function_logs} AND severity>=ERROR AND jsonPayload.logger=\"epox.billing\" AND jsonPayload.message=~\"^stripe event quarantined as \""
      documentation = join("\n", [
        "A signed Stripe event could not be applied (poison) and was quarantined as a dead letter; Stripe got a 2xx and will not retry.",
        "Fix the cause, then replay the letter through the billing admin routes.",
      ])
    }
  }
}

resource "google_monitoring_notification_channel" "email" {
  display_name = "Epox ${var.environment} alerts"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "alerts" {
  for_each    = local.log_alerts
  name        = "epox/${each.key}"
  description = each.value.title
  filter      = each.value.filter
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "alerts" {
  for_each     = local.log_alerts
  display_name = "Epox ${var.environment}: ${each.value.title}"
  combiner     = "OR"
  severity     = each.value.severity

  conditions {
    display_name = each.value.title
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.alerts[each.key].name}\" AND resource.type=\"${each.value.resource_type}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  notification_channels = [google_monitoring_notification_channel.email.id]
  alert_strategy {
    auto_close = "86400s"
  }
  documentation {
    content   = each.value.documentation
    mime_type = "text/markdown"
  }
}
