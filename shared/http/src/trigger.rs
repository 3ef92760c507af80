//! `POST /v1/opscore/agent/{agentId}/workflow`: the body ([`opscore_api::TriggerRequest`] on the
//! wire) read into what the use case takes, with the same 422s as ever.

use crate::error::HttpError;
use crate::extract::{FromJson, json_object};
use crate::state::summarise;
use opscore_core::app::DefinitionSource;
use opscore_core::ids::{WorkflowId, WorkflowVersion};
use opscore_core::workflow::{Problem, WorkflowDefinition};
use serde_json::{Map, Value};

/// A trigger's body: a stored definition (and version) or an inline one, the payload, and
/// whether this session routes by capability.
pub struct Trigger {
    pub source: DefinitionSource,
    pub payload: Option<Value>,
    pub route_by_capability: bool,
}

/// The body of a start without an agent (`POST /v1/opscore/workflows/{workflowId}/sessions`):
/// a version and the payload, both optional.
pub struct StartRouted {
    pub version: Option<WorkflowVersion>,
    pub payload: Option<Value>,
}

impl FromJson for StartRouted {
    fn from_json(body: &[u8]) -> Result<Self, HttpError> {
        let mut obj = json_object(body)?;
        let take = |o: &mut Map<String, Value>, k: &str| o.remove(k).filter(|v| !v.is_null());
        let version = version_of(take(&mut obj, "workflowVersion"))?;
        let payload = payload_of(take(&mut obj, "initialPayload"))?;
        Ok(StartRouted { version, payload })
    }
}

fn version_of(version: Option<Value>) -> Result<Option<WorkflowVersion>, HttpError> {
    match version {
        None => Ok(None),
        Some(Value::String(v)) => Ok(Some(WorkflowVersion::parse(v).map_err(|e| {
            HttpError::invalid(
                format!("workflowVersion: {e}"),
                vec![Problem::new("workflowVersion", e.to_string())],
            )
        })?)),
        Some(_) => Err(HttpError::invalid(
            "workflowVersion must be a string",
            vec![Problem::new("workflowVersion", "must be a string")],
        )),
    }
}

fn payload_of(payload: Option<Value>) -> Result<Option<Value>, HttpError> {
    match payload {
        None | Some(Value::Object(_)) => Ok(payload),
        Some(_) => Err(HttpError::invalid(
            "initialPayload must be an object",
            vec![Problem::new("initialPayload", "must be an object")],
        )),
    }
}

impl FromJson for Trigger {
    fn from_json(body: &[u8]) -> Result<Self, HttpError> {
        let mut obj = json_object(body)?;
        let take = |o: &mut Map<String, Value>, k: &str| o.remove(k).filter(|v| !v.is_null());
        let id = take(&mut obj, "workflowDefinitionId");
        let inline = take(&mut obj, "workflowDefinition");
        let version = take(&mut obj, "workflowVersion");
        let payload = take(&mut obj, "initialPayload");
        let route_by_capability = match take(&mut obj, "routeByCapability") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err(HttpError::invalid(
                    "routeByCapability must be a boolean",
                    vec![Problem::new("routeByCapability", "must be a boolean")],
                ));
            }
        };
        let source = match (id, inline) {
            (Some(_), Some(_)) | (None, None) => {
                let p = vec![Problem::new(
                    "workflowDefinitionId",
                    "give exactly one of workflowDefinitionId and workflowDefinition",
                )];
                return Err(HttpError::invalid(
                    "give exactly one of workflowDefinitionId and workflowDefinition",
                    p,
                ));
            }
            (Some(Value::String(id)), None) => {
                let id = WorkflowId::parse(id).map_err(|e| {
                    HttpError::invalid(
                        format!("workflowDefinitionId: {e}"),
                        vec![Problem::new("workflowDefinitionId", e.to_string())],
                    )
                })?;
                let version = version_of(version)?;
                DefinitionSource::Stored { id, version }
            }
            (Some(_), None) => {
                return Err(HttpError::invalid(
                    "workflowDefinitionId must be a string",
                    vec![Problem::new("workflowDefinitionId", "must be a string")],
                ));
            }
            (None, Some(def)) => {
                let def = WorkflowDefinition::from_value(def).map_err(|p| {
                    let p: Vec<Problem> = p
                        .into_iter()
                        .map(|p| {
                            Problem::new(
                                if p.field.is_empty() {
                                    "workflowDefinition".into()
                                } else {
                                    format!("workflowDefinition.{}", p.field)
                                },
                                p.message,
                            )
                        })
                        .collect();
                    HttpError::invalid(summarise("workflowDefinition is invalid", &p), p)
                })?;
                DefinitionSource::Inline(Box::new(def))
            }
        };
        let payload = payload_of(payload)?;
        Ok(Trigger {
            source,
            payload,
            route_by_capability,
        })
    }
}
