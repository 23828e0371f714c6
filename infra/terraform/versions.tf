terraform {
  # 1.6: the gcs backend with partial configuration, preconditions, terraform_data.
  required_version = ">= 1.6.0"
  # google 7.x is current; cloudflare 5.12 fixed the R2 lifecycle and CORS resources this uses.
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.12"
    }
  }
}
