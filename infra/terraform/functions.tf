# Every entry point of the manifest is one gen2 function, named after it, built from its folder's bundle.

module "function" {
  source   = "./modules/cloud-function"
  for_each = local.entry_points

  project_id            = var.project_id
  region                = var.region
  name                  = each.key
  description           = "Epox ${each.key} (${each.value.trigger}; functions/${each.value.folder})"
  runtime               = var.runtime
  source_bucket         = google_storage_bucket.sources.name
  source_object         = google_storage_bucket_object.bundle[each.value.folder].name
  build_service_account = google_service_account.build.id
  docker_repository     = google_artifact_registry_repository.functions.id
  service_account_email = google_service_account.function[each.key].email
  resources = {
    memory          = each.value.memory
    cpu             = each.value.cpu
    timeout_seconds = each.value.timeout_seconds
    min_instances   = each.value.min_instances
    max_instances   = each.value.max_instances
    concurrency     = each.value.concurrency
  }
  environment_variables = local.function_environment[each.key]
  secret_environment_variables = {
    for secret in local.function_secrets[each.key] : secret => {
      secret  = google_secret_manager_secret.secrets[secret].secret_id
      version = lookup(var.secret_versions, secret, "latest")
    }
  }
  # Public APIs and webhooks: anyone (the code checks JWTs and signatures); workers and scheduled jobs:
  # only the account Cloud Tasks and Cloud Scheduler sign as.
  public   = each.value.invoker == "all_users"
  invokers = each.value.invoker == "tasks_service_account" ? { tasks = google_service_account.tasks.member } : {}
  labels   = { function = replace(each.key, "_", "-"), folder = replace(each.value.folder, "_", "-") }

  # A function starts only once it may read its secrets, and its build account may build it.
  depends_on = [
    terraform_data.settings_check,
    google_secret_manager_secret_iam_member.function,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_sources,
    google_artifact_registry_repository_iam_member.build_images,
  ]
}
