//! `GET /v1/audit?from&to&actor&action&limit&cursor` for the DPO: audit entries, oldest first,
//! cursor = the last seq seen.

use std::sync::Arc;

use hyper::Response;

use crate::api::error::ApiError;
use crate::api::{AppState, Body, Request, limit_param, paged, time_range};
use crate::catalog::AuditFilter;

pub(super) async fn list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    request.only_params(&["from", "to", "actor", "action", "object", "limit", "cursor"])?;
    let limit = limit_param(&request)?;
    let (from, to) = time_range(&request)?;
    let filter = AuditFilter {
        from,
        to,
        actor: request.param("actor").map(str::to_owned),
        action: request.param("action").map(str::to_owned),
        object: request.param("object").map(str::to_owned),
    };
    let after = match request.param("cursor") {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?,
    };
    let entries = state
        .catalog
        .call(move |catalog| catalog.audit_query(&filter, after, limit + 1))
        .await?;
    Ok(paged(&entries, limit, crate::audit::entry_json, |e| {
        e.seq.to_string()
    }))
}
