# One service account per entry point (its runtime identity, holding only what its groups need), one
# whose OIDC tokens Cloud Tasks and Cloud Scheduler carry to the workers, one that builds the functions.

resource "google_service_account" "function" {
  for_each     = local.entry_points
  account_id   = "fn-${replace(each.key, "_", "-")}"
  display_name = "Epox function ${each.key}"
  description  = "Runtime identity of the ${each.key} function (${join(", ", each.value.needs)})."
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "tasks" {
  account_id   = "epox-tasks-invoker"
  display_name = "Epox tasks and scheduler invoker"
  description  = "Cloud Tasks and Cloud Scheduler sign their calls to the workers and scheduled jobs as this account (OIDC); it can invoke those functions and nothing else."
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "build" {
  account_id   = "epox-functions-build"
  display_name = "Epox functions build"
  description  = "Cloud Build runs the functions' builds as this account: reads the sources, writes the images, writes build logs."
  depends_on   = [google_project_service.apis]
}
