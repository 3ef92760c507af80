//! The OpenAPI 3 document, generated from the handlers' types (utoipa).

#![allow(dead_code)] // The annotated functions exist only to carry the path documentation.

use crate::error::ErrorBody;
use opscore_api::*;
use opscore_core::session::{FailureCause, SessionStatus};
use opscore_core::task::Attempt;
use opscore_core::workflow::{Problem, RetryPolicy, TaskDefinition, WorkflowDefinition};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
fn health() {}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document")))]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/opscore/agents", security(("bearer" = [])),
    params(("state" = Option<String>, Query, description = "Only agents currently in this state", min_length = 1, max_length = 64),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, body = Page<AgentView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
fn list_agents() {}

#[utoipa::path(get, path = "/v1/opscore/agent/{agentId}", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn get_agent() {}

#[utoipa::path(post, path = "/v1/opscore/agent/{agentId}/state", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")), request_body = StateUpdateRequest,
    responses((status = 202, body = StateUpdateAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "Unknown agent (the reference agent retries)", body = ErrorBody),
              (status = 409, description = "The agent is deregistered", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
fn post_state() {}

#[utoipa::path(get, path = "/v1/opscore/agent/{agentId}/state", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    responses((status = 200, body = AgentStateView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn get_state() {}

#[utoipa::path(get, path = "/v1/opscore/agent/{agentId}/state/history", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, description = "Newest report first", body = Page<HistoryItem>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn history() {}

#[utoipa::path(post, path = "/v1/opscore/agent/{agentId}/workflow", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retried request with the same key returns the same session", pattern = "^[!-~]{1,255}$")),
    request_body = TriggerRequest,
    responses((status = 202, body = TriggerResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "Unknown agent or definition", body = ErrorBody), (status = 409, description = "The agent is deregistered", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
fn trigger() {}

#[utoipa::path(get, path = "/v1/opscore/agent/{agentId}/sessions", security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, description = "Newest first", body = Page<SessionSummary>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn list_sessions() {}

#[utoipa::path(post, path = "/v1/opscore/workflows", security(("bearer" = [])),
    request_body(content(
        (WorkflowDefinition = "application/json"),
        (WorkflowDefinition = "application/yaml"))),
    responses((status = 201, body = WorkflowView), (status = 200, description = "Identical definition already stored", body = WorkflowView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, description = "Same id and version, other content", body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, description = "Every validation problem, listed", body = ErrorBody)))]
fn create_workflow() {}

#[utoipa::path(get, path = "/v1/opscore/workflows", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, body = Page<WorkflowSummary>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
fn list_workflows() {}

#[utoipa::path(get, path = "/v1/opscore/workflows/{workflowId}", security(("bearer" = [])),
    params(("workflowId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("version" = Option<String>, Query, description = "Default: the newest", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, body = WorkflowView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn get_workflow() {}

#[utoipa::path(get, path = "/v1/opscore/sessions/{sessionId}", security(("bearer" = [])),
    params(("sessionId" = String, Path, description = "A UUID", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, body = SessionDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
fn get_session() {}

#[utoipa::path(post, path = "/v1/opscore/sessions/{sessionId}/cancel", security(("bearer" = [])),
    params(("sessionId" = String, Path, description = "A UUID", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, body = SessionDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The session has already ended", body = ErrorBody)))]
fn cancel_session() {}

#[utoipa::path(post, path = "/v1/opscore/internal/agent/notify",
    params(("X-AgentKit-Timestamp" = String, Header, description = "Unix seconds"),
           ("X-AgentKit-Signature" = String, Header, description = "hex HMAC-SHA256(secret, timestamp + '.' + raw body)")),
    request_body(content = Object, description = "AgentKit REGISTER / DEREGISTER event"),
    responses((status = 200, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
fn notify() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ops-Core", description = "Operations backbone for AgentKit agents: lifecycle state and multi-step workflows."),
    paths(health, openapi_json, list_agents, get_agent, post_state, get_state, history, trigger, list_sessions,
          create_workflow, list_workflows, get_workflow, get_session, cancel_session, notify),
    components(schemas(ErrorBody, Problem, Health, Accepted, StateUpdateRequest, StateUpdateAccepted, AgentStateView, AgentView,
                       HistoryItem, WorkflowSummary, WorkflowView, WorkflowDefinition, TaskDefinition, RetryPolicy,
                       TriggerRequest, TriggerResponse, SessionSummary, SessionDetail, TaskView, Attempt, FailureCause, SessionStatus)),
    modifiers(&Bearer, &TriggerOneOf)
)]
struct Doc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// A trigger names a stored definition or carries one inline, never both (422 otherwise): the
/// derived schema has both fields optional, so `oneOf` over the two `required` sets is added.
struct TriggerOneOf;

impl utoipa::Modify for TriggerOneOf {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
        let Some(schemas) = openapi.components.as_mut().map(|c| &mut c.schemas) else {
            return;
        };
        let Some(derived) = schemas.remove("TriggerRequest") else {
            return;
        };
        // Present and not null: the fields are nullable, and a null counts as absent.
        let present = |field: &str, of: Type| {
            ObjectBuilder::new()
                .property(field, ObjectBuilder::new().schema_type(of))
                .required(field)
        };
        let one_of = OneOfBuilder::new()
            .item(present("workflowDefinitionId", Type::String))
            .item(present("workflowDefinition", Type::Object))
            .description(Some("Exactly one of workflowDefinitionId and workflowDefinition."));
        let schema = AllOfBuilder::new().item(derived).item(one_of).build();
        schemas.insert("TriggerRequest".to_owned(), Schema::AllOf(schema).into());
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = 0;
        for (method, path, needs_key) in crate::api::ROUTES {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from openapi"))[method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} missing from openapi");
            assert_eq!(op.get("security").is_some(), *needs_key, "{method} {path} security");
            documented += 1;
        }
        let total: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(total, documented, "openapi documents a route the router does not serve");
    }

    #[test]
    fn a_trigger_names_a_stored_definition_or_carries_one_never_both() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let trigger = &doc["components"]["schemas"]["TriggerRequest"];
        let parts = trigger["allOf"].as_array().expect("allOf");
        assert!(parts[0]["properties"]["initialPayload"].is_object(), "{trigger}");
        let required: Vec<&serde_json::Value> = parts[1]["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .map(|s| &s["required"])
            .collect();
        assert_eq!(
            required,
            [
                &serde_json::json!(["workflowDefinitionId"]),
                &serde_json::json!(["workflowDefinition"])
            ]
        );
    }
}
