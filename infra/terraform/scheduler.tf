# One Cloud Scheduler job per schedule of the manifest: a bodiless POST to the entry point's route, signed
# with an OIDC token of the tasks account whose audience is the function's own URL (what the workers
# accept: TASKS_TARGET_BASE_URL/FUNCTION_TARGET). A run with failed clients answers 500
# (scheduled_job_incomplete) and the retry policy runs it again; the jobs are idempotent.

locals {
  schedules = merge([
    for name, entry in local.entry_points : {
      for schedule in entry.schedules :
      "${name}${replace(schedule.path, "/", "-")}${try(schedule.query, "") == "" ? "" : "-${replace(replace(schedule.query, "=", "-"), "&", "-")}"}" => merge(schedule, {
        entry_point = name
        uri         = "${local.functions_base_url}/${name}${schedule.path}${try(schedule.query, "") == "" ? "" : "?${schedule.query}"}"
        audience    = "${local.functions_base_url}/${name}"
        # The function's own timeout, within what HTTP targets allow (15 s to 30 min).
        attempt_deadline = "${min(max(entry.timeout_seconds, 15), 1800)}s"
      })
    }
  ]...)
}

resource "google_cloud_scheduler_job" "jobs" {
  for_each         = local.schedules
  name             = each.key
  region           = var.region
  description      = "POST ${each.value.uri}"
  schedule         = each.value.cron
  time_zone        = each.value.time_zone
  attempt_deadline = each.value.attempt_deadline

  retry_config {
    retry_count          = each.value.retry_count
    min_backoff_duration = "${each.value.min_backoff_seconds}s"
    max_backoff_duration = "${max(each.value.min_backoff_seconds, 3600)}s"
  }

  http_target {
    http_method = "POST"
    uri         = each.value.uri
    oidc_token {
      service_account_email = google_service_account.tasks.email
      audience              = each.value.audience
    }
  }

  depends_on = [module.function]
}
