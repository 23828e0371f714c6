# Inputs of one deployment (an environment: one Google Cloud project, one R2 bucket). Examples:
# environments/dev.tfvars.example and prod.tfvars.example. Secret values are never inputs: they are added
# to Secret Manager out of band (README.md in this folder).

variable "project_id" {
  description = "The Google Cloud project the environment lives in."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the functions, the queue, the scheduler jobs and the function sources (e.g. europe-west1)."
  type        = string
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1."
  }
}

variable "environment" {
  description = "dev or prod: labels, alert titles, resource names."
  type        = string
  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be dev or prod."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database, a region (europe-west1) or multi-region (eur3, nam5). Immutable."
  type        = string
  validation {
    condition     = can(regex("^([a-z]+-[a-z]+[0-9]|eur3|nam5|nam7)$", var.firestore_location))
    error_message = "firestore_location must be a region or one of the multi-regions eur3, nam5, nam7."
  }
}

variable "kms_location" {
  description = "Location of the key ring holding the store-credential key; null: the region."
  type        = string
  default     = null
  validation {
    condition     = var.kms_location == null || can(regex("^([a-z]+-[a-z]+[0-9]|global|europe|us|asia)$", var.kms_location))
    error_message = "kms_location must be a region, a multi-region (europe, us, asia) or global."
  }
}

variable "build_dir" {
  description = "Where `make build` wrote the bundles (<folder>.zip); null: the repository's build/ folder."
  type        = string
  default     = null
}

variable "runtime" {
  description = "The Cloud Functions runtime (the Python the code targets: pyproject.toml's requires-python)."
  type        = string
  default     = "python311"
  validation {
    condition     = can(regex("^python3[0-9]{2}$", var.runtime))
    error_message = "runtime must be a Python runtime such as python311."
  }
}

variable "settings" {
  description = <<-EOT
    Per-deployment settings the functions need that Terraform cannot compute (AUTH_JWKS_URL, AUTH_ISSUER,
    AUTH_AUDIENCE, BILLING_SUCCESS_URL, BILLING_CANCEL_URL, BILLING_PORTAL_RETURN_URL, STRIPE_PRICE_IDS, SMTP_HOST,
    SMTP_USERNAME, MAIL_FROM, APP_URL, SHOPIFY_CLIENT_ID, and any optional setting of the manifest's groups).
    Each function gets only those of its groups (infra/functions.json). Never a secret: those are Secret Manager's.
  EOT
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for name in keys(var.settings) : can(regex("^[A-Z][A-Z0-9_]*$", name))])
    error_message = "settings keys are environment variable names in upper case (AUTH_ISSUER, …)."
  }
  validation {
    condition = alltrue([
      for name in keys(var.settings) : !can(regex("(SECRET|PASSWORD|API_KEY|ACCESS_KEY|TOKEN)", name))
    ])
    error_message = "settings must not carry secrets: add them to Secret Manager (gcloud secrets versions add NAME)."
  }
}

variable "secret_versions" {
  description = "Secret Manager version each function reads per secret (a number pins it: changing it redeploys); default latest (read when an instance starts)."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for version in values(var.secret_versions) : can(regex("^(latest|[1-9][0-9]*)$", version))])
    error_message = "secret_versions values must be latest or a version number."
  }
}

variable "frontend_origins" {
  description = "The frontend's origins (https://host[:port]): CORS_ALLOWED_ORIGINS of the functions and the R2 bucket's CORS (browsers upload to presigned URLs)."
  type        = list(string)
  validation {
    condition     = length(var.frontend_origins) > 0 && alltrue([for origin in var.frontend_origins : can(regex("^https://[a-z0-9.-]+(:[0-9]+)?$", origin))])
    error_message = "frontend_origins must list https origins only (no path, no trailing slash, never * or null)."
  }
}

variable "alert_email" {
  description = "Where the log-based alerts are sent (ledger drift, failed scheduled jobs, parked events, quarantined Stripe events)."
  type        = string
  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", var.alert_email))
    error_message = "alert_email must be an email address."
  }
}

variable "cloudflare_account_id" {
  description = "The Cloudflare account that owns the R2 bucket (32 hexadecimal characters)."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{32}$", var.cloudflare_account_id))
    error_message = "cloudflare_account_id must be 32 lowercase hexadecimal characters."
  }
}

variable "r2_bucket_name" {
  description = "The R2 bucket holding every image, video and upload."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.r2_bucket_name))
    error_message = "r2_bucket_name must be 3-63 lowercase letters, digits and hyphens."
  }
}

variable "r2_location" {
  description = "R2 location hint (apac, eeur, enam, weur, wnam, oc); null: Cloudflare picks. Honoured at creation only."
  type        = string
  default     = null
  validation {
    condition     = var.r2_location == null || contains(["apac", "eeur", "enam", "weur", "wnam", "oc"], coalesce(var.r2_location, "none"))
    error_message = "r2_location must be one of apac, eeur, enam, weur, wnam, oc."
  }
}

variable "r2_jurisdiction" {
  description = "R2 jurisdiction (default, eu, fedramp): where objects are guaranteed to stay; also the S3 endpoint's host."
  type        = string
  default     = "default"
  validation {
    condition     = contains(["default", "eu", "fedramp"], var.r2_jurisdiction)
    error_message = "r2_jurisdiction must be default, eu or fedramp."
  }
}

variable "tasks_log_sampling_ratio" {
  description = "Fraction of Cloud Tasks dispatch attempts logged (0 to 1)."
  type        = number
  default     = 0.1
  validation {
    condition     = var.tasks_log_sampling_ratio >= 0 && var.tasks_log_sampling_ratio <= 1
    error_message = "tasks_log_sampling_ratio must be between 0 and 1."
  }
}
