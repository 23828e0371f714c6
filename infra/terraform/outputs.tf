output "function_urls" {
  description = "Every function's URL, by entry point."
  value       = { for name, function in module.function : name => function.url }
}

output "functions_base_url" {
  description = "TASKS_TARGET_BASE_URL: every function is BASE/<entry point>."
  value       = local.functions_base_url
}

output "stripe_webhook_url" {
  description = "Stripe dashboard → Developers → Webhooks: the endpoint URL (events listed in README.md, Deploying)."
  value       = "${local.functions_base_url}/stripe_webhook/"
}

output "shopify_redirect_url" {
  description = "Shopify app configuration: the allowed redirection URL of the OAuth grant."
  value       = "${local.computed_settings.STORE_CALLBACK_BASE_URL}/oauth/shopify/callback"
}

output "shopify_webhook_url" {
  description = "shopify.app.toml: the uri of every webhook subscription, compliance topics included."
  value       = "${local.computed_settings.STORE_WEBHOOK_BASE_URL}/webhooks/shopify"
}

output "woocommerce_urls" {
  description = "wc-auth's callback_url and return_url, and the base of the webhooks the app creates on each store (…/<client>/<connection>); set by the code from STORE_*_BASE_URL, listed for checking."
  value = {
    callback_url = "${local.computed_settings.STORE_CALLBACK_BASE_URL}/oauth/woocommerce/callback"
    return_url   = "${local.computed_settings.STORE_CALLBACK_BASE_URL}/oauth/woocommerce/return"
    webhook_base = "${local.computed_settings.STORE_WEBHOOK_BASE_URL}/webhooks/woocommerce"
  }
}

output "public_base_urls" {
  description = "PUBLIC_BASE_URL (the emails' unsubscribe links), STORE_CALLBACK_BASE_URL and STORE_WEBHOOK_BASE_URL as the functions get them."
  value = {
    PUBLIC_BASE_URL         = local.computed_settings.PUBLIC_BASE_URL
    STORE_CALLBACK_BASE_URL = local.computed_settings.STORE_CALLBACK_BASE_URL
    STORE_WEBHOOK_BASE_URL  = local.computed_settings.STORE_WEBHOOK_BASE_URL
  }
}

output "secret_ids" {
  description = "The Secret Manager secrets to give a version before the functions deploy (gcloud secrets versions add NAME --data-file=-)."
  value       = local.secret_names
}

output "tasks_service_account" {
  description = "TASKS_SERVICE_ACCOUNT: the account Cloud Tasks and Cloud Scheduler sign their calls as."
  value       = google_service_account.tasks.email
}

output "store_credential_kms_key" {
  description = "STORE_CREDENTIAL_KMS_KEY."
  value       = google_kms_crypto_key.store_credentials.id
}

output "r2" {
  description = "The R2 bucket and its S3 endpoint (R2_BUCKET, R2_ENDPOINT_URL)."
  value = {
    bucket   = cloudflare_r2_bucket.assets.name
    endpoint = local.r2_endpoint_url
  }
}

output "scheduler_jobs" {
  description = "The Cloud Scheduler jobs, by name: their cron and target."
  value       = { for name, job in local.schedules : name => "${job.cron} POST ${job.entry_point}${job.path}" }
}
