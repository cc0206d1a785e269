//! Privacy-policy endpoints: objections (caller and call level, withdrawal), litigation holds
//! (place, list, detail, release, evidence export), data-subject access and export, and the
//! quarantine list. Decisions live in `objections`, `retention` and the catalog's transactions;
//! this file parses, calls and shapes answers.

use std::io::Write;
use std::sync::Arc;

use hyper::{Response, StatusCode, header};

use crate::api::error::ApiError;
use crate::api::handlers::recordings::{filter_of, list_page};
use crate::api::{
    AppState, Body, ChannelWriter, Request, channel_body, id_cursor_param, json, known_keys,
    limit_param, paged, text_field,
};
use crate::audit::chain::{AuditDraft, Outcome, format_time};
use crate::catalog::policy::{Deletion, HoldPlacement, HoldRow, HoldSelector};
use crate::catalog::recordings::{Lookup, RecordingFilter};
use crate::catalog::{AuditFilter, Catalog, CatalogError};
use crate::ingest::metadata::PhoneNumber;
use crate::ingest::open_personal;
use crate::objections::{CALLER_DOMAIN, Objections, Source};
use crate::retention::purge::unlink_and_checkpoint;
use crate::vault::BlobId;
use crate::vault::store::PlainReader;

const JSON_LIMIT: usize = 1 << 20;

fn phone(text: &str, field: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(text)
        .map_err(|e| ApiError::BadRequest(format!("`{field}` is not a phone number: {e}")))
}

/// Runs blocking registry work on a blocking thread.
async fn with_registry<T, F>(state: &Arc<AppState>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Objections<'_>) -> Result<T, crate::objections::ObjectionError> + Send + 'static,
{
    let shared = state.clone();
    tokio::task::spawn_blocking(move || {
        let registry = Objections {
            catalog: &shared.catalog,
            vault: &shared.vault,
            keyring: &shared.keyring,
        };
        work(&registry)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::from)
}

/// The rows of one page of a cursor-paginated list, and the page size: `limit` and `cursor` from
/// the query string, then `fetch(catalog, cursor, limit + 1)` on a blocking thread (the extra
/// row tells `paged` whether a next page exists). A cursor is the id of the last item of the
/// previous page: `id_prefix` then a recording-style id, anything else is refused.
async fn list_rows<R, F>(
    state: &Arc<AppState>,
    request: &Request,
    id_prefix: &str,
    fetch: F,
) -> Result<(Vec<R>, usize), ApiError>
where
    R: Send + 'static,
    F: FnOnce(&Catalog, Option<&str>, usize) -> Result<Vec<R>, CatalogError> + Send + 'static,
{
    let limit = limit_param(request)?;
    let after = id_cursor_param(request, id_prefix)?;
    let rows = state
        .catalog
        .call(move |catalog| fetch(catalog, after.as_deref(), limit + 1))
        .await?;
    Ok((rows, limit))
}

/// `POST /v1/objections` (dpo, operator).
pub(super) async fn objection_create(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(JSON_LIMIT, state.config.server.idle_timeout)
        .await?;
    known_keys(&body, "the objection", &["caller", "source", "reference"])?;
    let number = phone(text_field(&body, "caller", 64)?, "caller")?;
    let source_text = text_field(&body, "source", 16)?;
    let source = Source::parse(source_text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`source` `{source_text}` is not one of call, letter, email, web"
        ))
    })?;
    let reference = match body.get("reference") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(_) => text_field(&body, "reference", 200)?.to_owned(),
    };
    let now = state.clock.now();
    let registered = with_registry(state, move |registry| {
        registry.register(
            &number,
            source,
            &reference,
            &caller.cn,
            caller.role.as_str(),
            now,
        )
    })
    .await?;
    state
        .metrics
        .count_purged("objection", registered.recordings_deleted);
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "id": registered.id,
            "recordings_deleted": registered.recordings_deleted,
            "recordings_deferred": registered.recordings_deferred,
        }),
    ))
}

/// `POST /v1/calls/{call_id}/objection` (operator).
pub(super) async fn call_objection(
    state: &Arc<AppState>,
    request: Request,
    call_id: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let now = state.clock.now();
    let outcome = with_registry(state, move |registry| {
        registry.register_call(&call_id, &caller.cn, caller.role.as_str(), now)
    })
    .await?;
    if outcome == Deletion::Deleted {
        state.metrics.count_purged("call_objection", 1);
    }
    let recording = match outcome {
        Deletion::Deleted => "deleted",
        Deletion::Deferred => "deferred",
        Deletion::Absent => "not_yet_received",
    };
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "status": "recorded", "recording": recording }),
    ))
}

/// `GET /v1/objections` (dpo).
pub(super) async fn objection_list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let (rows, limit) = list_rows(state, &request, "obj_", Catalog::objection_list).await?;
    let item = |row: &crate::catalog::policy::ObjectionRow| {
        serde_json::json!({
            "id": row.id,
            "date": format_time(row.created_at),
            "source": row.source,
            "reference": row.reference,
            "last_digits": row.last_digits,
            "withdrawn_at": row.withdrawn_at.map(format_time),
        })
    };
    Ok(paged(&rows, limit, item, |row| row.id.clone()))
}

/// `DELETE /v1/objections/{id}` (dpo).
pub(super) async fn objection_withdraw(
    state: &Arc<AppState>,
    request: Request,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let now = state.clock.now();
    let target = id.clone();
    let withdrawn = with_registry(state, move |registry| {
        registry.withdraw(&target, &caller.cn, caller.role.as_str(), now)
    })
    .await?;
    if withdrawn {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "status": "withdrawn", "withdrawn_at": format_time(now) }),
        ));
    }
    let target = id.clone();
    let found = state
        .catalog
        .call(move |catalog| catalog.objection_withdrawn_at(&target))
        .await?;
    match found {
        Some(Some(at)) => Err(ApiError::Conflict {
            code: "already_withdrawn",
            message: format!("objection {id} was withdrawn at {}", format_time(at)),
        }),
        _ => Err(ApiError::NotFound),
    }
}

fn hold_json(hold: &HoldRow) -> serde_json::Value {
    let mut value = serde_json::json!({
        "id": hold.id,
        "case_ref": hold.case_ref,
        "reason": hold.reason,
        "selector": hold.selector_kind,
        "include_future": hold.include_future,
        "placed_by": hold.placed_by,
        "placed_at": format_time(hold.placed_at),
        "state": match hold.released_at { Some(_) => "released", None => "active" },
        "released_at": hold.released_at.map(format_time),
        "released_by": hold.released_by,
        "release_reason": hold.release_reason,
        "recordings": hold.covered,
    });
    // A range hold says which: legal checks the period it asked for.
    if let Some((from, to)) = hold.range {
        value["from"] = format_time(from).into();
        value["to"] = format_time(to).into();
    }
    value
}

/// `POST /v1/holds` (legal).
pub(super) async fn hold_place(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(JSON_LIMIT, state.config.server.idle_timeout)
        .await?;
    known_keys(
        &body,
        "the hold",
        &["case_ref", "reason", "selector", "include_future"],
    )?;
    let case_ref = text_field(&body, "case_ref", 200)?.to_owned();
    let reason = text_field(&body, "reason", 500)?.to_owned();
    let include_future = match body.get("include_future") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(flag)) => *flag,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`include_future` must be true or false".into(),
            ));
        }
    };
    if let Some(selector) = body.get("selector") {
        known_keys(
            selector,
            "`selector`",
            &["recording_ids", "account", "caller", "from", "to"],
        )?;
    }
    let selector = body.get("selector").and_then(|v| v.as_object()).ok_or_else(|| {
        ApiError::BadRequest("`selector` is required: {\"recording_ids\": [...]}, {\"account\"}, {\"caller\"} or {\"from\", \"to\"}".into())
    })?;
    let selector = match (
        selector.get("recording_ids"),
        selector.get("account"),
        selector.get("caller"),
        selector.get("from"),
        selector.get("to"),
    ) {
        (Some(ids), None, None, None, None) => {
            let ids = ids
                .as_array()
                .ok_or_else(|| ApiError::BadRequest("`recording_ids` must be an array".into()))?;
            if ids.is_empty() || ids.len() > 10_000 {
                return Err(ApiError::BadRequest(
                    "`recording_ids` must hold 1 to 10000 ids".into(),
                ));
            }
            let mut parsed = Vec::new();
            for id in ids {
                let text = id.as_str().unwrap_or("");
                parsed.push(BlobId::parse(text).ok_or_else(|| {
                    ApiError::BadRequest(format!("`{text}` is not a recording id"))
                })?);
            }
            HoldSelector::Ids(parsed)
        }
        (None, Some(account), None, None, None) => {
            let account = account
                .as_str()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| ApiError::BadRequest("`account` must be a string".into()))?;
            HoldSelector::Account(crate::ingest::account_digest(&state.keyring, account))
        }
        (None, None, Some(number), None, None) => {
            let number = phone(number.as_str().unwrap_or(""), "selector.caller")?;
            HoldSelector::Caller(state.keyring.digest(CALLER_DOMAIN, number.as_str()))
        }
        (None, None, None, Some(from), Some(to)) => {
            let time = |value: &serde_json::Value, name: &str| {
                value
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("`selector.{name}` is not an RFC 3339 time"))
                    })
            };
            let (from, to) = (time(from, "from")?, time(to, "to")?);
            if to < from {
                return Err(ApiError::BadRequest(
                    "`selector.to` must not be before `selector.from`".into(),
                ));
            }
            HoldSelector::Range { from, to }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "`selector` must have exactly one of recording_ids, account, caller, or from+to"
                    .into(),
            ));
        }
    };
    // Named recordings must exist: a mistyped id is refused (no hold is placed). One already
    // deleted cannot be held; the hold covers the others and the answer (and its audit entry)
    // names the deleted ones with their tombstones, so legal sees the evidence is gone. The
    // catalog sorts them in the transaction that places the hold: an erasure committed a moment
    // before is named, not dropped.
    let id = format!("hold_{}", BlobId::generate());
    let now = state.clock.now();
    let hold_id = id.clone();
    let placement = state
        .catalog
        .call(move |catalog| {
            let audit = |n: u64, n_deleted: usize| {
                AuditDraft::new(
                    &caller.cn,
                    caller.role.as_str(),
                    "hold.place",
                    &hold_id,
                    Outcome::Allowed,
                )
                .detail(match n_deleted {
                    0 => format!("{n} recordings, include_future {include_future}"),
                    _ => format!(
                        "{n} recordings, include_future {include_future}; {n_deleted} named \
                         recordings already deleted"
                    ),
                })
            };
            catalog.hold_place(
                &hold_id,
                &case_ref,
                &reason,
                &selector,
                include_future,
                &caller.cn,
                &audit,
                now,
            )
        })
        .await?;
    let (covered, deleted) = match placement {
        HoldPlacement::Placed { covered, deleted } => (covered, deleted),
        HoldPlacement::UnknownRecording(unknown) => {
            return Err(ApiError::NotFoundWhat(format!(
                "recording {unknown} does not exist; no hold was placed"
            )));
        }
    };
    state.metrics.holds_active.inc();
    let mut answer = serde_json::json!({ "id": id, "recordings": covered });
    if !deleted.is_empty() {
        answer["deleted"] = deleted
            .iter()
            .map(|tomb| {
                serde_json::json!({
                    "id": tomb.id.to_string(),
                    "deleted_at": format_time(tomb.deleted_at),
                    "reason": tomb.reason,
                })
            })
            .collect();
    }
    Ok(json(StatusCode::CREATED, &answer))
}

/// `GET /v1/holds` (legal, dpo).
pub(super) async fn hold_list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    // Each hold with the recordings it covers (SPEC §6: "with covered recordings").
    let (rows, limit) = list_rows(state, &request, "hold_", |catalog, after, limit| {
        let mut out = Vec::new();
        for hold in catalog.hold_list(after, limit)? {
            let covered = catalog
                .hold_get(&hold.id)?
                .map(|(_, covered)| covered)
                .unwrap_or_default();
            out.push((hold, covered));
        }
        Ok(out)
    })
    .await?;
    let item = |(hold, covered): &(HoldRow, Vec<BlobId>)| {
        let mut value = hold_json(hold);
        value["recording_ids"] = covered.iter().map(|id| id.to_string()).collect();
        value
    };
    Ok(paged(&rows, limit, item, |(hold, _)| hold.id.clone()))
}

/// `GET /v1/holds/{id}` (legal, dpo).
pub(super) async fn hold_get(
    state: &Arc<AppState>,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let found = state
        .catalog
        .call(move |catalog| catalog.hold_get(&id))
        .await?;
    let (hold, covered) = found.ok_or(ApiError::NotFound)?;
    let mut value = hold_json(&hold);
    value["recording_ids"] = covered.iter().map(|id| id.to_string()).collect();
    Ok(json(StatusCode::OK, &value))
}

/// `POST /v1/holds/{id}/release` (legal).
pub(super) async fn hold_release(
    state: &Arc<AppState>,
    request: Request,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let body = request
        .json(JSON_LIMIT, state.config.server.idle_timeout)
        .await?;
    let reason = text_field(&body, "reason", 500)?.to_owned();
    let now = state.clock.now();
    let hold_id = id.clone();
    let released = state
        .catalog
        .call(move |catalog| {
            let audit = AuditDraft::new(
                &caller.cn,
                caller.role.as_str(),
                "hold.release",
                &hold_id,
                Outcome::Allowed,
            )
            .detail(reason.clone());
            let deletion = |recording: &BlobId, why: &str| {
                AuditDraft::new(
                    &caller.cn,
                    caller.role.as_str(),
                    "recording.delete",
                    &recording.to_string(),
                    Outcome::Allowed,
                )
                .detail(format!("{why} (deferred until release of {hold_id})"))
            };
            catalog.hold_release(&hold_id, &reason, &caller.cn, audit, &deletion, now)
        })
        .await?;
    let Some(deleted) = released else {
        let target = id.clone();
        let found = state
            .catalog
            .call(move |catalog| catalog.hold_get(&target))
            .await?;
        return match found.and_then(|(hold, _)| hold.released_at) {
            Some(at) => Err(ApiError::Conflict {
                code: "already_released",
                message: format!("hold {id} was released at {}", format_time(at)),
            }),
            None => Err(ApiError::NotFound),
        };
    };
    let (catalog, vault) = (state.catalog.clone(), state.vault.clone());
    let to_unlink: Vec<BlobId> = deleted.iter().map(|(id, _)| *id).collect();
    tokio::task::spawn_blocking(move || unlink_and_checkpoint(&catalog, &vault, &to_unlink))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for (_, why) in &deleted {
        state.metrics.count_purged(why, 1);
    }
    state.metrics.holds_active.dec();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "status": "released", "released_at": format_time(now), "recordings_deleted": deleted.len() }),
    ))
}

/// `GET /v1/holds/{id}/export` (legal): a tar of the held audio and a manifest.
pub(super) async fn hold_export(
    state: &Arc<AppState>,
    request: Request,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let hold_id = id.clone();
    let found = state
        .catalog
        .call(move |catalog| catalog.hold_get(&hold_id))
        .await?;
    let (hold, covered) = found.ok_or(ApiError::NotFound)?;
    if let Some(at) = hold.released_at {
        // Its recordings are no longer held (some may be gone): the evidence is exported while
        // the hold is active.
        return Err(ApiError::Conflict {
            code: "already_released",
            message: format!(
                "hold {id} was released at {}: export a hold while it is active",
                format_time(at)
            ),
        });
    }
    let context = serde_json::json!({ "hold": hold_json(&hold) });
    let of = ExportOf {
        purpose: "litigation",
        action: "hold.export",
        object: id.clone(),
        what: format!("hold {id}"),
        file_name: format!("{id}.tar"),
    };
    export(state, &request, covered, &of, context).await
}

/// What an export is, for its audit entries and its file.
struct ExportOf {
    /// The purpose each audio read is audited with.
    purpose: &'static str,
    /// The audit action of the export as a whole, and what it is about.
    action: &'static str,
    object: String,
    /// Words for the reads' audit detail.
    what: String,
    file_name: String,
}

/// The digests of `number` as a caller and as a callee.
fn party_digests(state: &AppState, number: &PhoneNumber) -> ([u8; 32], [u8; 32]) {
    (
        state.keyring.digest(CALLER_DOMAIN, number.as_str()),
        state
            .keyring
            .digest(crate::ingest::CALLEE_DOMAIN, number.as_str()),
    )
}

/// `GET /v1/subjects/recordings?caller=` (dpo): the person's recordings, as caller or callee.
pub(super) async fn subject_recordings(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let number = super::recordings::number_param(&request, "caller")?
        .ok_or_else(|| ApiError::BadRequest("`caller` is required".into()))?;
    // The person's number on either end of the call.
    let filter = RecordingFilter {
        caller_hmac: None,
        party: Some(party_digests(state, &number)),
        ..filter_of(state, &request)?
    };
    list_page(state, &request, filter).await
}

/// `GET /v1/subjects/export?caller=` (dpo): access and portability, as a tar.
pub(super) async fn subject_export(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let number = super::recordings::number_param(&request, "caller")?
        .ok_or_else(|| ApiError::BadRequest("`caller` is required".into()))?;
    let filter = RecordingFilter {
        party: Some(party_digests(state, &number)),
        ..RecordingFilter::default()
    };
    let ids = state
        .catalog
        .call(move |catalog| {
            let mut ids = Vec::new();
            let mut cursor = None;
            loop {
                let rows = catalog.search_recordings(&filter, cursor, 1000)?;
                let Some(last) = rows.last() else { break };
                cursor = Some(crate::catalog::recordings::RecordingCursor {
                    started_at: last.started_at,
                    id: last.id,
                });
                ids.extend(rows.iter().map(|row| row.id));
            }
            Ok(ids)
        })
        .await?;
    let context = serde_json::json!({ "subject": { "caller": number.as_str() } });
    let of = ExportOf {
        purpose: "data_subject_request",
        action: "subject.export",
        object: String::new(),
        what: "subject access request".to_owned(),
        file_name: "subject-export.tar".to_owned(),
    };
    export(state, &request, ids, &of, context).await
}

/// Streams a tar of `ids`' original audio plus `manifest.json` (metadata, SHA-256 recorded at
/// ingest, the audit entries about each recording, the audit chain head). Each read is audited
/// with `purpose` before the stream starts, and so is the export itself. Recordings the reader
/// may not have (past retention and unheld, deletion pending, deleted) are listed under
/// `left_out` with the reason, by id only.
async fn export(
    state: &Arc<AppState>,
    request: &Request,
    ids: Vec<BlobId>,
    of: &ExportOf,
    context: serde_json::Value,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let now = state.clock.now();
    let (purpose, what) = (of.purpose, of.what.clone());
    let (action, object) = (of.action, of.object.clone());
    let (rows, receipts, audit_entries, head, left_out) = state
        .catalog
        .call(move |catalog| {
            let mut rows = Vec::new();
            let mut receipts = Vec::new();
            // Recordings the export does not carry, and why: past retention and unheld, a
            // deletion waiting for a hold (the reader's role decides, as for a single read),
            // or deleted (with the tombstone). Ids only.
            let mut left_out = Vec::new();
            for id in ids {
                match catalog.recording(&id)? {
                    Lookup::Found(row) => {
                        let holds = catalog.holds_of(&id)?;
                        let pending = row.pending_deletion.is_some();
                        if let Err(refused) = crate::retention::may_read(
                            row.retain_until,
                            pending,
                            holds.len(),
                            caller.role,
                            now,
                        ) {
                            left_out.push(serde_json::json!({
                                "id": id.to_string(),
                                "why": refused.reason(),
                            }));
                            continue;
                        }
                        let draft = AuditDraft::new(
                            &caller.cn,
                            caller.role.as_str(),
                            "recording.read_audio",
                            &id.to_string(),
                            Outcome::Allowed,
                        )
                        .purpose(purpose)
                        .detail(format!("export: {what}"));
                        receipts.push(catalog.audit(draft, now)?);
                        rows.push(*row);
                    }
                    Lookup::Deleted(tomb) => left_out.push(serde_json::json!({
                        "id": tomb.id.to_string(),
                        "why": "deleted",
                        "deleted_at": format_time(tomb.deleted_at),
                        "reason": tomb.reason,
                    })),
                    Lookup::NotFound => {}
                }
            }
            // The export itself, even when it carries nothing.
            let draft = AuditDraft::new(
                &caller.cn,
                caller.role.as_str(),
                action,
                &object,
                Outcome::Allowed,
            )
            .purpose(purpose)
            .detail(format!(
                "{} recordings exported, {} left out",
                rows.len(),
                left_out.len()
            ));
            catalog.audit(draft, now)?;
            let mut entries = Vec::new();
            for row in &rows {
                let filter = AuditFilter {
                    object: Some(row.id.to_string()),
                    ..AuditFilter::default()
                };
                let mut after = 0;
                loop {
                    let batch = catalog.audit_query(&filter, after, 1000)?;
                    let Some(last) = batch.last() else { break };
                    after = last.seq;
                    entries.extend(batch);
                }
            }
            Ok((rows, receipts, entries, catalog.audit_head()?, left_out))
        })
        .await?;
    state
        .metrics
        .audio_reads
        .get_or_create(&vec![("purpose", purpose.to_owned())])
        .inc_by(rows.len() as u64);

    let mut manifest_recordings = Vec::new();
    let mut files = Vec::new();
    for row in &rows {
        let personal = open_personal(&state.keyring, row)?;
        let name = format!("{}.{}", row.id, super::recordings::extension_of(&row.audio));
        manifest_recordings.push(serde_json::json!({
            "id": row.id.to_string(),
            "file": name,
            "sha256": hex::encode(row.sha256),
            "size": row.size,
            "call_id": personal.call_id,
            "caller": personal.caller,
            "callee": personal.callee,
            "account": personal.account,
            "operator": personal.operator,
            "alarm_case": row.alarm_case,
            "started_at": format_time(row.started_at),
            "direction": row.direction,
            "codec": row.audio.codec,
            "duration_ms": row.audio.duration_ms,
            "retain_until": format_time(row.retain_until),
        }));
        let key = state.keyring.recording_key(&row.id, &row.wrapped_key)?;
        files.push((name, row.clone(), key));
    }
    let mut manifest = context;
    manifest["exported_at"] = format_time(now).into();
    manifest["exported_by"] = request.caller.cn.clone().into();
    manifest["recordings"] = manifest_recordings.into();
    manifest["left_out"] = left_out.into();
    manifest["audit_entries"] = audit_entries.iter().map(crate::audit::entry_json).collect();
    manifest["audit_head"] = match head {
        Some((seq, hash)) => serde_json::json!({ "seq": seq, "hash": hex::encode(hash) }),
        None => serde_json::Value::Null,
    };
    let manifest =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ApiError::Internal(e.to_string()))?;

    let (tx, body) = channel_body();
    let vault = state.vault.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(tx.clone());
        let result = (|| -> std::io::Result<()> {
            let mut tar = tar::Builder::new(&mut writer);
            let mut header = tar::Header::new_gnu();
            header.set_size(manifest.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(now.as_second().max(0) as u64);
            tar.append_data(&mut header, "manifest.json", manifest.as_slice())?;
            for ((name, row, key), receipt) in files.iter().zip(receipts.iter()) {
                let reader = PlainReader::open(&vault, row.id, key, receipt)
                    .map_err(std::io::Error::other)?;
                let mut header = tar::Header::new_gnu();
                header.set_size(row.size);
                header.set_mode(0o600);
                header.set_mtime(row.started_at.as_second().max(0) as u64);
                tar.append_data(&mut header, name, reader)?;
            }
            tar.finish()?;
            drop(tar);
            writer.flush()
        })();
        if let Err(error) = result {
            tracing::error!(%error, "export failed mid-stream");
            let _ = tx.blocking_send(Err(error));
        }
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Ok(value) =
        header::HeaderValue::from_str(&format!("attachment; filename=\"{}\"", of.file_name))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /v1/quarantine` (dpo).
pub(super) async fn quarantine_list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let (rows, limit) = list_rows(state, &request, "", Catalog::quarantine_list).await?;
    let item = |row: &crate::catalog::policy::QuarantineRow| {
        let name = state
            .keyring
            .key(&format!("quarantine/{}", row.id), &row.wrapped_key)
            .and_then(|key| {
                key.open(
                    format!("quarantine/{}/name", row.id).as_bytes(),
                    &row.sealed_name,
                )
            })
            .map(|plain| String::from_utf8_lossy(&plain).into_owned())
            .ok();
        serde_json::json!({
            "id": row.id,
            "file_name": name,
            "reason": row.reason,
            "size": row.size,
            "sha256": hex::encode(row.sha256),
            "received_at": format_time(row.received_at),
            "retain_until": format_time(row.retain_until),
        })
    };
    Ok(paged(&rows, limit, item, |row| row.id.clone()))
}
