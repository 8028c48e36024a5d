//! The OpenAPI description, generated from the handlers' `#[utoipa::path]` annotations and the
//! API types (`switchyard_protocol::api`, built with its `openapi` feature), through the same
//! router that serves the routes (`utoipa_axum`): a route cannot be served without being
//! described, and a field cannot be added to a type without appearing. Served without a token
//! at `/openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use super::Api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard coordinator API",
        description = "The operator and agent API of a Switchyard coordinator. Every call but the \
            health probes and this description needs `Authorization: Bearer <token>`. Writes \
            carry an optional `request_id` (1 to 32 hex digits): the cluster applies a request \
            id once, so a client may send a write again after a timeout or a leader change. \
            Reads are linearizable unless `stale=true`. A follower forwards writes and \
            linearizable reads to the leader. Errors answer a JSON body with a stable `code`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "cluster", description = "Membership, status, identity, restore, snapshots"),
        (name = "hosts", description = "VM hosts and their agents' reports"),
        (name = "guests", description = "Distributed guests"),
        (name = "packages", description = "Failover packages and their switching"),
        (name = "migrations", description = "Migrations: sagas of log commits"),
        (name = "events", description = "The event history and live subscriptions"),
        (name = "operations", description = "Health probes and this description; no token"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This description, as JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()), responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json", body = Object)))]
pub(super) async fn serve(State(s): State<Arc<Api>>) -> Response {
    ([("content-type", "application/json")], s.spec.to_string()).into_response()
}
