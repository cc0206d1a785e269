//! Alarm endpoints: events from alarm-management software (`alarm_source`), open cases and
//! closing them (operators), trusted contacts of an open case (operators only, each read
//! audited with the case), and contact lists written by the contracts system.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use crate::alarms::cases::{CaseError, IncomingEvent, Origin};
use crate::alarms::frame::EventCode;
use crate::api::error::ApiError;
use crate::api::{
    AppState, Body, Caller, Request, id_cursor_param, json, limit_param, page, paged, text_field,
};
use crate::audit::chain::{AuditDraft, Outcome, format_time};
use crate::catalog::alarms::{CaseChange, CaseListing, CaseRow, EventRow};
use crate::contacts::{self, ContactError};

fn case_error(error: CaseError) -> ApiError {
    match error {
        CaseError::NotFound => ApiError::NotFound,
        CaseError::Closed => ApiError::NoOpenAlarm,
        CaseError::Catalog(error) => error.into(),
        CaseError::Key(error) => error.into(),
    }
}

fn contact_error(error: ContactError) -> ApiError {
    match error {
        ContactError::Invalid { .. } | ContactError::Shape => {
            ApiError::BadRequest(error.to_string())
        }
        ContactError::Catalog(error) => error.into(),
        ContactError::Key(error) => error.into(),
    }
}

/// Runs blocking case work on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = state.clone();
    tokio::task::spawn_blocking(move || work(&shared))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// `POST /v1/alarms` (alarm_source).
pub(super) async fn post(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(64 * 1024, state.config.server.idle_timeout)
        .await?;
    let account = text_field(&body, "account", 64)?;
    let event_text = body.get("event").and_then(|v| v.as_str()).unwrap_or("");
    let code = EventCode::parse_api(event_text)
        .map_err(|e| ApiError::BadRequest(format!("`event`: {e}")))?;
    let zone = match body.get("zone") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(zone))
            if zone.len() <= 16 && !zone.chars().any(char::is_control) =>
        {
            Some(zone.clone())
        }
        Some(serde_json::Value::Number(zone)) => Some(zone.to_string()),
        Some(_) => return Err(ApiError::BadRequest("`zone` must be a short string".into())),
    };
    let now = state.clock.now();
    let received_at = match body.get("received_at").and_then(|v| v.as_str()) {
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .map_err(|_| ApiError::BadRequest("`received_at` is not an RFC 3339 time".into()))?,
        None => now,
    };
    // An alarm source's clock may drift, not by days: a time far ahead would keep the
    // account's case `last_event_at` ahead of every later event.
    let tolerance = crate::ingest::FUTURE_TOLERANCE;
    if received_at > now.saturating_add(tolerance).unwrap_or(now) {
        return Err(ApiError::BadRequest(format!(
            "`received_at` is more than {} hours ahead of this server's clock",
            tolerance.as_hours(),
        )));
    }
    let account = account.to_owned();
    let change = blocking(state, move |state| {
        state
            .cases()
            .record(
                &IncomingEvent::new(&account, &code, zone.as_deref(), received_at),
                &Origin::api(&caller.cn, caller.role.as_str()),
                now,
            )
            .map_err(case_error)
    })
    .await?;
    let (status, case, action) = match change {
        CaseChange::Opened(id) => (StatusCode::CREATED, Some(id), "opened"),
        CaseChange::Joined(id) => (StatusCode::OK, Some(id), "joined"),
        CaseChange::Ignored => (StatusCode::OK, None, "ignored"),
    };
    Ok(json(
        status,
        &serde_json::json!({ "case": case, "action": action }),
    ))
}

/// `GET /v1/alarms?state=open` (operator).
pub(super) async fn list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let which = match request.param("state") {
        None | Some("open") => CaseListing::Open,
        Some("closed") => CaseListing::Closed,
        Some("all") => CaseListing::All,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`state` `{other}` is not one of open, closed, all"
            )));
        }
    };
    let limit = limit_param(&request)?;
    let after = id_cursor_param(&request, "case_")?;
    let now = state.clock.now();
    let rows = blocking(state, move |state| {
        let registry = state.cases();
        let rows = registry
            .page(which, after.as_deref(), limit + 1, now)
            .map_err(case_error)?;
        let mut out = Vec::new();
        for (case, events) in rows {
            let account = registry.account_of(&case).map_err(case_error)?;
            let closing = registry.closing(&case, now);
            out.push((case, events, account, closing));
        }
        Ok(out)
    })
    .await?;
    type Item = (
        CaseRow,
        Vec<EventRow>,
        String,
        Option<(jiff::Timestamp, String)>,
    );
    let item = |(case, events, account, closing): &Item| {
        serde_json::json!({
            "id": case.id,
            "account": account,
            "state": if closing.is_none() { "open" } else { "closed" },
            "opened_at": format_time(case.opened_at),
            "last_event_at": format_time(case.last_event_at),
            "closed_at": closing.as_ref().map(|(at, _)| format_time(*at)),
            "outcome": closing.as_ref().map(|(_, outcome)| outcome),
            "events": events.iter().map(|e| serde_json::json!({
                "at": format_time(e.at), "event": e.code, "zone": e.zone, "group": e.group,
                "source": e.source, "line": e.line,
            })).collect::<Vec<_>>(),
        })
    };
    Ok(paged(&rows, limit, item, |(case, ..)| case.id.clone()))
}

/// `POST /v1/alarms/{id}/close` (operator).
pub(super) async fn close(
    state: &Arc<AppState>,
    request: Request,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(64 * 1024, state.config.server.idle_timeout)
        .await?;
    let outcome = text_field(&body, "outcome", 200)?.to_owned();
    let now = state.clock.now();
    let case_id = id.clone();
    blocking(state, move |state| {
        let case = state.catalog.case(&case_id)?.ok_or(ApiError::NotFound)?;
        if case.closed_at.is_some() {
            return Err(ApiError::Conflict {
                code: "case_closed",
                message: "this alarm case is already closed".into(),
            });
        }
        let audit = AuditDraft::new(
            &caller.cn,
            caller.role.as_str(),
            "alarm.close",
            &case_id,
            Outcome::Allowed,
        )
        .detail("closed by operator");
        match state
            .catalog
            .close_case(&case_id, &caller.cn, &outcome, audit, now)?
        {
            true => Ok(()),
            false => Err(ApiError::Conflict {
                code: "case_closed",
                message: "this alarm case is already closed".into(),
            }),
        }
    })
    .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "state": "closed", "closed_at": format_time(now) }),
    ))
}

/// `GET /v1/alarms/{id}/contacts` (operator): only while the case is open, audited with it.
pub(super) async fn contacts(
    state: &Arc<AppState>,
    request: Request,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let now = state.clock.now();
    let items = blocking(state, move |state| {
        let open = match state.cases().open_case(&id, now) {
            Ok(open) => open,
            Err(error) => {
                let refused = AuditDraft::new(
                    &caller.cn,
                    caller.role.as_str(),
                    "contacts.read",
                    &id,
                    Outcome::Denied,
                )
                .detail("no open alarm case");
                state.catalog.audit(refused, now)?;
                return Err(case_error(error));
            }
        };
        let draft = AuditDraft::new(
            &caller.cn,
            caller.role.as_str(),
            "contacts.read",
            open.id(),
            Outcome::Allowed,
        )
        .purpose("alarm_handling");
        let receipt = state.catalog.audit(draft, now)?;
        contacts::read(&state.catalog, &state.keyring, &open, &receipt).map_err(contact_error)
    })
    .await?;
    Ok(page(items, None))
}

/// `PUT /v1/accounts/{account}/contacts` (contracts): the full list; never read back.
pub(super) async fn put(
    state: &Arc<AppState>,
    request: Request,
    account: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(256 * 1024, state.config.server.idle_timeout)
        .await?;
    let list = contacts::parse_list(&body).map_err(contact_error)?;
    let n = list.len();
    let previous = replace_contacts(state, &caller, account, Some(list)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "contacts": n, "replaced": previous }),
    ))
}

/// `DELETE /v1/accounts/{account}/contacts` (contracts): all designations ended.
pub(super) async fn delete(
    state: &Arc<AppState>,
    request: Request,
    account: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let previous = replace_contacts(state, &caller, account, None).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "deleted": previous }),
    ))
}

/// Replaces the account's trusted contacts with `list` (`None`: ends them all); returns how
/// many designations the previous list had.
async fn replace_contacts(
    state: &Arc<AppState>,
    caller: &Caller,
    account: String,
    list: Option<Vec<contacts::Contact>>,
) -> Result<u64, ApiError> {
    let (cn, role) = (caller.cn.clone(), caller.role);
    let now = state.clock.now();
    blocking(state, move |state| {
        contacts::replace(
            &state.catalog,
            &state.keyring,
            &account,
            list.as_deref(),
            &cn,
            role.as_str(),
            now,
        )
        .map_err(contact_error)
    })
    .await
}
