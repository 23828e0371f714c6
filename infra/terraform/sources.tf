# The functions' sources: one zip per function folder from `make build` (reproducible, so the name's content
# hash changes exactly when the code does: a change redeploys the folder's functions, no change does nothing),
# and the repository the builds push their images to.

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket only Terraform and Cloud Build read add nothing to Cloud Audit Logs.
  name                        = "${var.project_id}-function-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  versioning {
    enabled = true
  }
  # Objects are named by content hash and never rewritten; a noncurrent one is a deleted bundle.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "bundle" {
  for_each = toset(local.folders)
  name     = "${each.key}-${filemd5("${local.build_dir}/${each.key}.zip")}.zip"
  bucket   = google_storage_bucket.sources.name
  source   = "${local.build_dir}/${each.key}.zip"
}

resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:The images hold the functions' code and no customer data; Google-managed encryption suffices.
  location      = var.region
  repository_id = "epox-functions"
  description   = "Images Cloud Build makes of the functions"
  format        = "DOCKER"
  depends_on    = [google_project_service.apis]
}
