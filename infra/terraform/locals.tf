# What the deployment is made of comes from two files the code and its tests share:
# ../functions.json (every entry point, the settings groups, the queues) and ../firestore.json (every
# index and TTL policy the queries need). Nothing here repeats them.

locals {
  manifest  = jsondecode(file("${path.module}/../functions.json"))
  firestore = jsondecode(file("${path.module}/../firestore.json"))

  entry_points = { for entry in local.manifest.entry_points : entry.name => entry }
  folders      = distinct([for entry in local.manifest.entry_points : entry.folder])
  queues       = { for queue in local.manifest.queues : queue.name => queue }
  build_dir    = coalesce(var.build_dir, "${path.module}/../../build")

  # Gen2 functions answer at https://REGION-PROJECT.cloudfunctions.net/<entry point>; workers accept OIDC
  # tokens whose audience is that URL exactly (TASKS_TARGET_BASE_URL/FUNCTION_TARGET).
  functions_base_url = "https://${var.region}-${var.project_id}.cloudfunctions.net"
  kms_location       = coalesce(var.kms_location, var.region)
  r2_endpoint_url = (
    var.r2_jurisdiction == "default"
    ? "https://${var.cloudflare_account_id}.r2.cloudflarestorage.com"
    : "https://${var.cloudflare_account_id}.${var.r2_jurisdiction}.r2.cloudflarestorage.com"
  )

  # Settings Terraform knows itself; a deployment cannot override them (settings_check below).
  computed_settings = {
    EPOX_ENV                 = "production"
    GCP_PROJECT              = var.project_id
    TASKS_BACKEND            = "cloud_tasks"
    TASKS_AUTH_MODE          = "oidc"
    TASKS_LOCATION           = var.region
    TASKS_SERVICE_ACCOUNT    = google_service_account.tasks.email
    TASKS_TARGET_BASE_URL    = local.functions_base_url
    AI_ENGINE                = "gemini"
    GEMINI_USE_VERTEX        = "true"
    R2_BUCKET                = cloudflare_r2_bucket.assets.name
    R2_ENDPOINT_URL          = local.r2_endpoint_url
    STORE_CREDENTIAL_KMS_KEY = google_kms_crypto_key.store_credentials.id
    PUBLIC_BASE_URL          = "${local.functions_base_url}/notifications_api"
    STORE_CALLBACK_BASE_URL  = "${local.functions_base_url}/store_oauth"
    STORE_WEBHOOK_BASE_URL   = "${local.functions_base_url}/store_webhook"
    CORS_ALLOWED_ORIGINS     = jsonencode(var.frontend_origins)
  }

  # Per entry point: the groups it takes its environment from (common + its needs) ...
  groups = {
    for name, entry in local.entry_points :
    name => concat([local.manifest.common], [for need in entry.needs : local.manifest.needs[need]])
  }
  required_settings = { for name, groups in local.groups : name => distinct(flatten([for g in groups : g.settings])) }
  optional_settings = { for name, groups in local.groups : name => distinct(flatten([for g in groups : g.optional_settings])) }
  function_secrets  = { for name, groups in local.groups : name => distinct(flatten([for g in groups : g.secrets])) }
  function_roles    = { for name, groups in local.groups : name => distinct(flatten([for g in groups : g.roles])) }

  # ... the values it may draw on: the deployment's, Terraform's, its own queue and the timeouts of its folder's
  # workers (each timeout setting goes to every function of the named entry point's folder) ...
  available_settings = {
    for name, entry in local.entry_points : name => merge(
      var.settings,
      local.computed_settings,
      length(entry.queues) == 0 ? {} : {
        # Each worker's tasks go to that worker's queue; a target it does not list falls back to the first.
        TASKS_QUEUES       = jsonencode({ for queue in entry.queues : local.queues[queue].target => queue })
        TASKS_QUEUE        = entry.queues[0]
        TASKS_MAX_ATTEMPTS = tostring(local.queues[entry.queues[0]].max_attempts)
      },
      # A worker that enqueues nothing still gives up on the queues' last attempt.
      length(entry.queues) > 0 ? {} : {
        TASKS_MAX_ATTEMPTS = tostring(min([for queue in local.manifest.queues : queue.max_attempts]...))
      },
      {
        for carried in local.manifest.timeout_settings :
        carried.setting => tostring(local.entry_points[carried.entry_point].timeout_seconds)
        if local.entry_points[carried.entry_point].folder == entry.folder
      },
    )
  }

  # ... and what it gets: every required setting, the optional ones that have a value, its folder's timeouts.
  function_environment = {
    for name, entry in local.entry_points : name => merge(
      { for setting in local.required_settings[name] : setting => lookup(local.available_settings[name], setting, "") },
      {
        for setting in local.optional_settings[name] :
        setting => local.available_settings[name][setting] if contains(keys(local.available_settings[name]), setting)
      },
      {
        for carried in local.manifest.timeout_settings :
        carried.setting => local.available_settings[name][carried.setting]
        if local.entry_points[carried.entry_point].folder == entry.folder
      },
    )
  }

  secret_names = sort(distinct(flatten([for name, secrets in local.function_secrets : secrets])))
  every_setting = distinct(flatten([
    for g in concat([local.manifest.common], values(local.manifest.needs)) : concat(g.settings, g.optional_settings)
  ]))
  missing_settings = sort(distinct(flatten([
    for name in keys(local.entry_points) : [
      for setting in local.required_settings[name] : setting
      if !contains(keys(local.available_settings[name]), setting)
    ]
  ])))
}

# Fails the plan, naming them, when a function would start without a setting production demands, when the
# deployment tries to override what Terraform computes or passes a secret or an unknown name as a setting.
resource "terraform_data" "settings_check" {
  input = sort(keys(var.settings))
  lifecycle {
    precondition {
      condition     = length(local.missing_settings) == 0
      error_message = "Missing in var.settings: ${join(", ", local.missing_settings)}."
    }
    precondition {
      condition     = length(setintersection(keys(var.settings), keys(local.computed_settings))) == 0
      error_message = "Terraform sets these itself; remove them from var.settings: ${join(", ", sort(setintersection(keys(var.settings), keys(local.computed_settings))))}."
    }
    precondition {
      condition     = length(setintersection(keys(var.settings), local.secret_names)) == 0
      error_message = "Secrets never go into var.settings (gcloud secrets versions add): ${join(", ", sort(setintersection(keys(var.settings), local.secret_names)))}."
    }
    precondition {
      condition     = length(setsubtract(keys(var.settings), local.every_setting)) == 0
      error_message = "No function takes these settings (a typo?): ${join(", ", sort(setsubtract(keys(var.settings), local.every_setting)))}."
    }
  }
}
