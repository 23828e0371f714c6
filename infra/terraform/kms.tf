# The key-encryption key that wraps each store connection's data key (envelope encryption, shared/credentials.py).
# Rotation makes a new primary version; the old ones stay enabled, so credentials sealed with them still open.

resource "google_kms_key_ring" "epox" {
  name       = "epox"
  location   = local.kms_location
  depends_on = [google_project_service.apis]
  lifecycle {
    prevent_destroy = true
  }
}

resource "google_kms_crypto_key" "store_credentials" {
  name            = "store-credentials"
  key_ring        = google_kms_key_ring.epox.id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = "7776000s" # 90 days
  version_template {
    algorithm        = "GOOGLE_SYMMETRIC_ENCRYPTION"
    protection_level = "SOFTWARE"
  }
  lifecycle {
    # Destroying the key makes every stored store credential unreadable.
    prevent_destroy = true
  }
}
