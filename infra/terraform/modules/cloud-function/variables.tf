variable "project_id" {
  description = "Project of the function and its secrets."
  type        = string
}

variable "region" {
  description = "Region of the function."
  type        = string
}

variable "name" {
  description = "The function's name: its entry point's name (the URL is https://REGION-PROJECT.cloudfunctions.net/<name>)."
  type        = string
  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9_-]{2,61}[a-zA-Z0-9]$", var.name))
    error_message = "A gen2 function name has 4-63 letters, digits, hyphens and underscores, starting with a letter."
  }
}

variable "entry_point" {
  description = "The Python function the runtime calls; null: the function's name."
  type        = string
  default     = null
}

variable "description" {
  description = "What the function does."
  type        = string
  default     = null
}

variable "runtime" {
  description = "The Cloud Functions runtime, e.g. python311."
  type        = string
}

variable "source_bucket" {
  description = "Bucket holding the source zip."
  type        = string
}

variable "source_object" {
  description = "The source zip's object name (content-addressed: a new name redeploys)."
  type        = string
}

variable "build_service_account" {
  description = "Full resource id of the account Cloud Build builds as (projects/P/serviceAccounts/EMAIL)."
  type        = string
}

variable "docker_repository" {
  description = "Artifact Registry repository the build pushes to (projects/P/locations/L/repositories/R)."
  type        = string
}

variable "service_account_email" {
  description = "The function's runtime identity."
  type        = string
}

variable "resources" {
  description = "Memory (e.g. 512Mi), CPU, timeout, instances and per-instance concurrency, as the manifest lists them."
  type = object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    min_instances   = number
    max_instances   = number
    concurrency     = number
  })
  validation {
    condition     = var.resources.timeout_seconds >= 1 && var.resources.timeout_seconds <= 3600
    error_message = "An HTTP gen2 function times out after at most 3600 s."
  }
  validation {
    condition     = var.resources.min_instances >= 0 && var.resources.max_instances >= max(1, var.resources.min_instances)
    error_message = "Instances: 0 <= min <= max, max >= 1."
  }
  validation {
    condition     = var.resources.concurrency == 1 || tonumber(var.resources.cpu) >= 1
    error_message = "Concurrency above 1 needs at least one CPU."
  }
}

variable "environment_variables" {
  description = "Plain environment variables (never a secret)."
  type        = map(string)
  default     = {}
}

variable "secret_environment_variables" {
  description = "Environment variables read from Secret Manager: variable name => { secret id, version }."
  type = map(object({
    secret  = string
    version = string
  }))
  default = {}
}

variable "public" {
  description = "Invokable by allUsers (public APIs and webhooks: the code checks the caller)."
  type        = bool
  default     = false
}

variable "invokers" {
  description = "Members that may invoke the function (serviceAccount:…), by a name known at plan time (the member may not be)."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels of the function."
  type        = map(string)
  default     = {}
}
