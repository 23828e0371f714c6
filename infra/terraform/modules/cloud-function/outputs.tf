output "name" {
  description = "The function's name."
  value       = google_cloudfunctions2_function.function.name
}

output "url" {
  description = "The function's URL (https://REGION-PROJECT.cloudfunctions.net/<name>)."
  value       = google_cloudfunctions2_function.function.url
}

output "service" {
  description = "The Cloud Run service behind the function."
  value       = local.service
}
