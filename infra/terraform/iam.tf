# Least privilege, derived from the manifest: each function's service account gets the roles of its
# groups (common + needs), each bound where the manifest says ("on"), never wider; secretAccessor on each
# secret of its groups only. No basic role (owner, editor, viewer) anywhere.

locals {
  role_grants = merge([
    for name, roles in local.function_roles : {
      for grant in roles : "${name}/${grant.on}/${grant.role}" => { function = name, role = grant.role, on = grant.on }
    }
  ]...)

  project_grants = { for key, grant in local.role_grants : key => grant if grant.on == "project" }
  queue_grants = merge([
    for key, grant in local.role_grants : {
      for queue in local.entry_points[grant.function].queues :
      "${grant.function}/${queue}/${grant.role}" => merge(grant, { queue = queue })
    } if grant.on == "queue"
  ]...)
  tasks_account_grants = { for key, grant in local.role_grants : key => grant if grant.on == "tasks_service_account" }
  store_key_grants     = { for key, grant in local.role_grants : key => grant if grant.on == "store_credential_key" }

  secret_grants = merge([
    for name, secrets in local.function_secrets : {
      for secret in secrets : "${name}/${secret}" => { function = name, secret = secret }
    }
  ]...)
}

resource "google_project_iam_member" "function" {
  for_each = local.project_grants
  project  = var.project_id
  role     = each.value.role
  member   = google_service_account.function[each.value.function].member
}

resource "google_cloud_tasks_queue_iam_member" "enqueuer" {
  for_each = local.queue_grants
  project  = var.project_id
  location = google_cloud_tasks_queue.queues[each.value.queue].location
  name     = google_cloud_tasks_queue.queues[each.value.queue].name
  role     = each.value.role
  member   = google_service_account.function[each.value.function].member
}

# Creating a task with an OIDC token is acting as the tasks account (iam.serviceAccounts.actAs).
resource "google_service_account_iam_member" "act_as_tasks" {
  for_each           = local.tasks_account_grants
  service_account_id = google_service_account.tasks.name
  role               = each.value.role
  member             = google_service_account.function[each.value.function].member
}

resource "google_kms_crypto_key_iam_member" "store_credentials" {
  for_each      = local.store_key_grants
  crypto_key_id = google_kms_crypto_key.store_credentials.id
  role          = each.value.role
  member        = google_service_account.function[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "function" {
  for_each  = local.secret_grants
  project   = var.project_id
  secret_id = google_secret_manager_secret.secrets[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

# The build account: build logs, the sources it builds, the images it pushes.
resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}

# Cloud Functions copies each source zip into its own bucket (gcf-v2-sources-<project number>-<region>, made on
# the first deploy, so it cannot be named here) and Cloud Build reads it from there: read access to that
# bucket and ours only, by condition.
resource "google_project_iam_member" "build_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member
  condition {
    title       = "function-sources-only"
    description = "The function source buckets: ours and the gcf-v2-sources-* bucket Cloud Functions copies them to."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\") || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.sources.name}\")"
  }
}

resource "google_artifact_registry_repository_iam_member" "build_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}
