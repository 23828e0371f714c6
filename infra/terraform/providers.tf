provider "google" {
  project = var.project_id
  region  = var.region
  default_labels = {
    app         = "epox"
    environment = var.environment
  }
}

# The API token comes from the environment (CLOUDFLARE_API_TOKEN, with R2 edit rights on the account),
# never from a variable: nothing secret goes into Terraform's inputs or the repository.
provider "cloudflare" {}
