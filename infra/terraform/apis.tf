resource "google_project_service" "apis" {
  for_each = toset([
    "aiplatform.googleapis.com", # Gemini and Veo through Vertex AI
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", # builds the functions from their sources
    "cloudfunctions.googleapis.com",
    "cloudkms.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "run.googleapis.com", # gen2 functions are Cloud Run services
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
  service = each.key
  # Turning an API off would break whatever else in the project uses it.
  disable_on_destroy = false
}
