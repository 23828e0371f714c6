# One gen2 HTTP function from a source zip in GCS, with its own runtime identity, its environment and
# secrets, and who may invoke it: roles/run.invoker on the Cloud Run service behind it (what gen2 checks).
# After cloud-foundation-fabric's cloud-function-v2, reduced to what this project deploys.

locals {
  # The Cloud Run service's short name (the function name with "_" turned into "-").
  service = element(split("/", google_cloudfunctions2_function.function.service_config[0].service), length(split("/", google_cloudfunctions2_function.function.service_config[0].service)) - 1)
}

resource "google_cloudfunctions2_function" "function" {
  #checkov:skip=CKV_GCP_124:Callers are browsers, Stripe, Shopify, WooCommerce, Cloud Tasks and Cloud Scheduler, none inside a VPC; run.invoker (below) decides who may call.
  project     = var.project_id
  location    = var.region
  name        = var.name
  description = var.description
  labels      = var.labels

  build_config {
    runtime           = var.runtime
    entry_point       = coalesce(var.entry_point, var.name)
    service_account   = var.build_service_account
    docker_repository = var.docker_repository
    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  service_config {
    available_memory                 = var.resources.memory
    available_cpu                    = var.resources.cpu
    timeout_seconds                  = var.resources.timeout_seconds
    min_instance_count               = var.resources.min_instances
    max_instance_count               = var.resources.max_instances
    max_instance_request_concurrency = var.resources.concurrency
    # Reached from the internet (browsers, Stripe, Shopify, WooCommerce) or by Cloud Tasks and Cloud
    # Scheduler, which call from outside any VPC; who may call is decided by run.invoker below.
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = var.service_account_email
    environment_variables          = var.environment_variables

    dynamic "secret_environment_variables" {
      for_each = var.secret_environment_variables
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret
        version    = secret_environment_variables.value.version
      }
    }
  }
}

# Public APIs and webhooks by design: every route checks a user JWT, a Stripe/Shopify/WooCommerce signature
# or an OAuth state itself. Workers and scheduled jobs never get this.
resource "google_cloud_run_v2_service_iam_member" "public" {
  count    = var.public ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = local.service
  role     = "roles/run.invoker"
  member   = "allUsers"
  lifecycle {
    # A replaced function is a new service: bind it again.
    replace_triggered_by = [google_cloudfunctions2_function.function.id]
  }
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = var.invokers
  project  = var.project_id
  location = var.region
  name     = local.service
  role     = "roles/run.invoker"
  member   = each.value
  lifecycle {
    replace_triggered_by = [google_cloudfunctions2_function.function.id]
  }
}
