//! The OpenAPI document, generated from the handlers' and types' annotations. It is checked in
//! (`schemas/openapi.json`, written by `maxions schema --out schemas`) and CI fails when it is
//! stale, so that clients and schemathesis test against what the code serves.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "maxions",
        description = "The HTTP API of `maxions daemon`: runs (\"maxions\") listed, followed live, cancelled, re-run and deleted; task files submitted into the tasks folder; schedules, engines, health and metrics. Every route but `/healthz` and `/api/config` needs `Authorization: Bearer <token>` unless the API is configured open on a loopback address.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::runs::list,
        super::submit::submit,
        super::runs::detail,
        super::runs::delete,
        super::runs::kill,
        super::runs::rerun,
        super::runs::logs,
        super::stream::stream,
        super::runs::schedules,
        super::runs::engines,
        super::healthz,
        super::public_config,
        super::metrics::metrics,
        document,
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "runs", description = "Runs and task files"),
        (name = "schedules", description = "Scheduled tasks"),
        (name = "engines", description = "The Docker engines runs are placed on"),
        (name = "meta", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

static DOCUMENT: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default());

/// The document as JSON.
#[must_use]
pub fn json() -> serde_json::Value {
    DOCUMENT.clone()
}

/// The document as `maxions schema` writes it: `schemas/openapi.json`.
#[must_use]
pub fn schema_file() -> crate::config::schema::SchemaFile {
    crate::config::schema::SchemaFile {
        file_name: "openapi.json",
        schema: &DOCUMENT,
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1", body = Object), (status = 401, body = super::error::ErrorBody)))]
pub async fn document() -> Json<&'static serde_json::Value> {
    Json(&DOCUMENT)
}
