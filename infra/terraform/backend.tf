# Remote state in the GCS bucket that bootstrap/ creates (versioned, uniform access, no public access).
# Partial configuration: `terraform init -backend-config="bucket=<state bucket>" -backend-config="prefix=<env>"`.
terraform {
  backend "gcs" {}
}
