//! Request handlers, one file per resource. `dispatch` is an exhaustive match over `Endpoint`:
//! each arm calls its handler, which parses input, calls the owning domain module and shapes
//! the JSON answer.

mod alarms;
mod audit;
mod policy;
mod recordings;
pub(crate) use recordings::body_stream;
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
        Endpoint::AlarmClose { id } => {
            let id = id.clone();
            alarms::close(state, request, id).await
        }
        Endpoint::AlarmContacts { id } => {
            let id = id.clone();
            alarms::contacts(state, request, id).await
        }
        Endpoint::AlarmList => alarms::list(state, request).await,
        Endpoint::AlarmPost => alarms::post(state, request).await,
        Endpoint::CallObjection { call_id } => {
            let call_id = call_id.clone();
            policy::call_objection(state, request, call_id).await
        }
        Endpoint::ContactsDelete { account } => {
            let account = account.clone();
            alarms::delete(state, request, account).await
        }
        Endpoint::ContactsPut { account } => {
            let account = account.clone();
            alarms::put(state, request, account).await
        }
        Endpoint::HoldExport { id } => {
            let id = id.clone();
            policy::hold_export(state, request, id).await
        }
        Endpoint::HoldGet { id } => policy::hold_get(state, id.clone()).await,
        Endpoint::HoldList => policy::hold_list(state, request).await,
        Endpoint::HoldPlace => policy::hold_place(state, request).await,
        Endpoint::HoldRelease { id } => {
            let id = id.clone();
            policy::hold_release(state, request, id).await
        }
        Endpoint::ObjectionCreate => policy::objection_create(state, request).await,
        Endpoint::ObjectionList => policy::objection_list(state, request).await,
        Endpoint::ObjectionWithdraw { id } => {
            let id = id.clone();
            policy::objection_withdraw(state, request, id).await
        }
        Endpoint::QuarantineList => policy::quarantine_list(state, request).await,
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
        Endpoint::SubjectExport => policy::subject_export(state, request).await,
        Endpoint::SubjectRecordings => policy::subject_recordings(state, request).await,
    }
}
