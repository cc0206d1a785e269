//! Request handlers, one file per resource. `dispatch` is an exhaustive match over `Endpoint`:
//! each arm calls its handler, which parses input, calls the owning domain module and shapes
//! the JSON answer.

mod audit;
mod recordings;
mod status;

use std::sync::Arc;

use hyper::Response;

use crate::api::error::ApiError;
use crate::api::routes::Endpoint;
use crate::api::{AppState, Body, Request};

/// Runs the handler of `request.endpoint`. The caller's role is already checked.
pub async fn dispatch(state: &Arc<AppState>, request: Request) -> Result<Response<Body>, ApiError> {
    match &request.endpoint {
        Endpoint::Status => status::get(state, request).await,
        Endpoint::AuditList => audit::list(state, request).await,
        Endpoint::AlarmClose { .. } => Err(ApiError::NotImplemented("closing alarm cases")),
        Endpoint::AlarmContacts { .. } => Err(ApiError::NotImplemented("trusted contacts")),
        Endpoint::AlarmList => Err(ApiError::NotImplemented("alarm cases")),
        Endpoint::AlarmPost => Err(ApiError::NotImplemented("alarm events")),
        Endpoint::CallObjection { .. } => Err(ApiError::NotImplemented("call objections")),
        Endpoint::ContactsDelete { .. } => Err(ApiError::NotImplemented("trusted contacts")),
        Endpoint::ContactsPut { .. } => Err(ApiError::NotImplemented("trusted contacts")),
        Endpoint::HoldExport { .. } => Err(ApiError::NotImplemented("hold exports")),
        Endpoint::HoldGet { .. } => Err(ApiError::NotImplemented("litigation holds")),
        Endpoint::HoldList => Err(ApiError::NotImplemented("litigation holds")),
        Endpoint::HoldPlace => Err(ApiError::NotImplemented("litigation holds")),
        Endpoint::HoldRelease { .. } => Err(ApiError::NotImplemented("litigation holds")),
        Endpoint::ObjectionCreate => Err(ApiError::NotImplemented("objections")),
        Endpoint::ObjectionList => Err(ApiError::NotImplemented("objections")),
        Endpoint::ObjectionWithdraw { .. } => Err(ApiError::NotImplemented("objections")),
        Endpoint::QuarantineList => Err(ApiError::NotImplemented("quarantine")),
        Endpoint::RecordingAudio { id } => {
            let id = *id;
            recordings::audio(state, request, id).await
        }
        Endpoint::RecordingDelete { id } => {
            let id = *id;
            recordings::delete(state, request, id).await
        }
        Endpoint::RecordingGet { id } => {
            let id = *id;
            recordings::get(state, request, id).await
        }
        Endpoint::RecordingList => recordings::list(state, request).await,
        Endpoint::RecordingUpload => recordings::upload(state, request).await,
        Endpoint::SubjectExport => Err(ApiError::NotImplemented("subject exports")),
        Endpoint::SubjectRecordings => Err(ApiError::NotImplemented("subject access")),
    }
}
