# The R2 bucket holding every image, video and upload. R2 lifecycle rules match key prefixes only (no tags),
# so each retention class lives in the key prefix the code writes under. Deletion happens within ~24 h of
# the age. The S3 access key pair (R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY) is an R2 API token made in the
# Cloudflare dashboard and added to Secret Manager out of band.

locals {
  day = 86400
  r2_retention = [
    # Browser uploads the app has not completed (a completed one is copied out; a missed sweep leaves these).
    { id = "uploads-1d", prefix = "uploads/", max_age = 1 * local.day },
    # Copies of approved images that stores fetch when images are pushed (valid for SYNC_SOURCE_URL_HOURS,
    # at most 7 days, plus a day's margin).
    { id = "sync-copies-8d", prefix = "sync-copies/", max_age = 8 * local.day },
    # Veo's clips as they came, kept until the video worker has joined them into a video (deleted then;
    # a job that failed or was cancelled mid-way leaves them).
    { id = "video-clips-3d", prefix = "video-clips/", max_age = 3 * local.day },
    # ZIP exports (archives, and the rows and checkpoints of builds in progress): a ready export says
    # when its archive may go (EXPORT_RETENTION_DAYS in shared/exports/service.py); asked again, it is built again.
    { id = "exports-7d", prefix = "exports/", max_age = 7 * local.day },
  ]
}

resource "cloudflare_r2_bucket" "assets" {
  account_id   = var.cloudflare_account_id
  name         = var.r2_bucket_name
  location     = var.r2_location
  jurisdiction = var.r2_jurisdiction
  lifecycle {
    prevent_destroy = true
  }
}

resource "cloudflare_r2_bucket_lifecycle" "assets" {
  account_id   = var.cloudflare_account_id
  bucket_name  = cloudflare_r2_bucket.assets.name
  jurisdiction = var.r2_jurisdiction
  rules = concat(
    [
      for rule in local.r2_retention : {
        id         = rule.id
        enabled    = true
        conditions = { prefix = rule.prefix }
        delete_objects_transition = {
          condition = { type = "Age", max_age = rule.max_age }
        }
      }
    ],
    [
      {
        # Replaces R2's default 7-day rule: a multipart upload left open a day is abandoned.
        id         = "abort-multipart-1d"
        enabled    = true
        conditions = { prefix = "" }
        abort_multipart_uploads_transition = {
          condition = { type = "Age", max_age = 1 * local.day }
        }
      },
    ],
  )
}

# Browsers PUT uploads to presigned URLs and read presigned downloads: only from the frontend's origins.
resource "cloudflare_r2_bucket_cors" "assets" {
  account_id   = var.cloudflare_account_id
  bucket_name  = cloudflare_r2_bucket.assets.name
  jurisdiction = var.r2_jurisdiction
  rules = [
    {
      id = "frontend"
      allowed = {
        methods = ["GET", "HEAD", "PUT"]
        origins = var.frontend_origins
        headers = ["Content-Type"]
      }
      expose_headers  = ["ETag"]
      max_age_seconds = 3600
    },
  ]
}
