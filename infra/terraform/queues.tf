# The Cloud Tasks queues of the manifest: retries as the workers assume (max_attempts is the code's
# TASKS_MAX_ATTEMPTS; a worker gives up cleanly on the last one) and dispatch rate limits.

resource "google_cloud_tasks_queue" "queues" {
  for_each = local.queues
  name     = each.key
  location = var.region

  rate_limits {
    max_dispatches_per_second = each.value.max_dispatches_per_second
    max_concurrent_dispatches = each.value.max_concurrent_dispatches
  }

  retry_config {
    max_attempts  = each.value.max_attempts
    min_backoff   = "${each.value.min_backoff_seconds}s"
    max_backoff   = "${each.value.max_backoff_seconds}s"
    max_doublings = each.value.max_doublings
  }

  stackdriver_logging_config {
    sampling_ratio = var.tasks_log_sampling_ratio
  }

  depends_on = [google_project_service.apis]
}
