//! The OpenAPI 3 document's frame: its info, the schemas, the bearer scheme and the trigger's
//! `oneOf`. The paths are collected from the router's handlers ([`crate::router::document`]).

use crate::error::ErrorBody;
use opscore_api::*;
use opscore_core::session::{FailureCause, FailureCode, SessionStatus};
use opscore_core::task::Attempt;
use opscore_core::workflow::{Problem, RetryPolicy, TaskDefinition, WorkflowDefinition};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(title = "Ops-Core", description = "Operations backbone for AgentKit agents: lifecycle state and multi-step workflows."),
    components(schemas(ErrorBody, Problem, Health, Accepted, StateUpdateRequest, StateUpdateAccepted, AgentStateView, AgentView,
                       HistoryEntryView, WorkflowSummary, WorkflowView, WorkflowDefinition, TaskDefinition, RetryPolicy,
                       TriggerRequest, StartRoutedRequest, TriggerResponse, SessionSummary, SessionDetail, TaskView, Attempt, FailureCause, FailureCode, SessionStatus)),
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

/// The document without paths, which the router fills in.
pub fn base() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    use crate::router::{Surface, document, test_router};
    use axum::body::Body;
    use http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    /// The document and the router agree: every documented operation is routed (not 404/405),
    /// one documented with `security` refuses a request without a key (401), and every other
    /// method on a documented path is a 405.
    #[tokio::test]
    async fn every_route_is_documented_and_nothing_else() {
        let router = test_router(Surface::Both);
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 17, "{:?}", paths.keys());
        let mut documented = 0;
        for (path, item) in paths {
            let concrete = path
                .replace("{sessionId}", "00000000-0000-4000-8000-000000000000")
                .replace("{file}", "app.js")
                .replace(['{', '}'], "");
            for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                let op = &item[method.as_str().to_lowercase()];
                let req = Request::builder()
                    .method(method.clone())
                    .uri(&concrete)
                    .body(Body::empty())
                    .unwrap();
                let status = router.clone().oneshot(req).await.unwrap().status();
                if op.is_object() {
                    documented += 1;
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: documented but answered {status}"
                    );
                    if op.get("security").is_some() {
                        assert_eq!(
                            status,
                            StatusCode::UNAUTHORIZED,
                            "{method} {path}: documented as needing the key"
                        );
                    }
                } else {
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: routed but not documented"
                    );
                }
            }
        }
        assert_eq!(documented, 19);
    }

    /// A client can branch on a failed session's `error.code`: the document lists every value.
    #[test]
    fn the_failure_codes_are_listed() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let listed: Vec<&str> = schemas["FailureCode"]["enum"]
            .as_array()
            .expect("an enum of strings")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let all: Vec<&str> = opscore_core::session::FailureCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(listed, all);
        assert!(listed.contains(&"task_timeout"));
        let code = &schemas["FailureCause"]["properties"]["code"];
        assert!(code.to_string().contains("#/components/schemas/FailureCode"), "{code}");
    }

    #[test]
    fn a_trigger_names_a_stored_definition_or_carries_one_never_both() {
        let doc = serde_json::to_value(document()).unwrap();
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
