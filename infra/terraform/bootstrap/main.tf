# Run once per environment, with local state, before the main configuration: the GCS bucket that holds
# the main configuration's remote state (versioned, so a bad apply can be rolled back; uniform access,
# public access prevented).

terraform {
  required_version = ">= 1.6.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
  }
}

variable "project_id" {
  description = "The environment's Google Cloud project."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id."
  }
}

variable "location" {
  description = "Location of the state bucket (a region or a multi-region such as EU)."
  type        = string
}

variable "bucket_name" {
  description = "The state bucket's name; null: <project_id>-tfstate."
  type        = string
  default     = null
}

provider "google" {
  project = var.project_id
}

resource "google_project_service" "storage" {
  service            = "storage.googleapis.com"
  disable_on_destroy = false
}

resource "google_storage_bucket" "state" {
  #checkov:skip=CKV_GCP_62:Access logging of the state bucket would need a second bucket; Cloud Audit Logs (data access) record who reads the state.
  name                        = coalesce(var.bucket_name, "${var.project_id}-tfstate")
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  versioning {
    enabled = true
  }
  # Old state versions are kept 90 days (the last 10 always).
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 90
      num_newer_versions         = 10
    }
    action {
      type = "Delete"
    }
  }
  lifecycle {
    prevent_destroy = true
  }
  depends_on = [google_project_service.storage]
}

output "state_bucket" {
  description = "Give it to the main configuration: terraform init -backend-config=\"bucket=<this>\"."
  value       = google_storage_bucket.state.name
}
