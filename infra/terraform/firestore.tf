# The Firestore database and every index and TTL policy the queries need, from ../firestore.json (the one
# list the code's tests and Terraform share).

resource "google_firestore_database" "main" {
  name        = "(default)"
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"
  # The ledger commits with update-time preconditions and retries (optimistic concurrency): read-modify-write
  # transactions with pessimistic locks collapse under contention on a balance document.
  concurrency_mode                  = "OPTIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` forgets the database; it never deletes the data.
  deletion_policy = "ABANDON"
  depends_on      = [google_project_service.apis]
}

locals {
  composite_indexes = {
    for index in local.firestore.composite_indexes :
    join(" ", concat([index.collection, index.query_scope], [
      for field in index.fields : "${field.field_path}:${try(field.order, field.array_config)}"
      ])) => {
      collection  = index.collection
      query_scope = index.query_scope
      fields = [
        for field in index.fields : {
          field_path   = field.field_path
          order        = try(field.order, null)
          array_config = try(field.array_config, null)
        }
      ]
    }
  }

  # A field may have both a single-field index override and a TTL policy: one google_firestore_field each.
  field_keys = distinct(concat(
    [for override in local.firestore.field_overrides : "${override.collection}/${override.field_path}"],
    [for policy in local.firestore.ttl_policies : "${policy.collection}/${policy.field_path}"],
  ))
  fields = {
    for key in local.field_keys : key => {
      collection = split("/", key)[0]
      field      = join("/", slice(split("/", key), 1, length(split("/", key))))
      indexes = try([
        for override in local.firestore.field_overrides : [
          for index in override.indexes : {
            query_scope  = index.query_scope
            order        = try(index.order, null)
            array_config = try(index.array_config, null)
          }
        ] if "${override.collection}/${override.field_path}" == key
      ][0], null)
      ttl = anytrue([for policy in local.firestore.ttl_policies : "${policy.collection}/${policy.field_path}" == key])
    }
  }
}

resource "google_firestore_index" "composite" {
  for_each    = local.composite_indexes
  database    = google_firestore_database.main.name
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value.field_path
      order        = fields.value.order
      array_config = fields.value.array_config
    }
  }
}

resource "google_firestore_field" "fields" {
  for_each   = local.fields
  database   = google_firestore_database.main.name
  collection = each.value.collection
  field      = each.value.field

  # Only for overrides: without the block the field keeps the database's automatic single-field indexes.
  dynamic "index_config" {
    for_each = each.value.indexes == null ? [] : [each.value.indexes]
    content {
      dynamic "indexes" {
        for_each = index_config.value
        content {
          query_scope  = indexes.value.query_scope
          order        = indexes.value.order
          array_config = indexes.value.array_config
        }
      }
    }
  }

  dynamic "ttl_config" {
    for_each = each.value.ttl ? [true] : []
    content {}
  }
}
