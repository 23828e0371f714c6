# One Secret Manager secret per secret of the manifest's groups, named after its environment variable.
# Terraform creates the secrets only: their values never pass through Terraform or the repository. Add
# each value out of band before the functions deploy (README.md here):
#   printf %s "$VALUE" | gcloud secrets versions add STRIPE_API_KEY --data-file=-

resource "google_secret_manager_secret" "secrets" {
  for_each  = toset(local.secret_names)
  secret_id = each.key
  replication {
    auto {}
  }
  labels     = { variable = lower(replace(each.key, "_", "-")) }
  depends_on = [google_project_service.apis]
}
