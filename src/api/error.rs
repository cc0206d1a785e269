//! The API's error vocabulary: `ApiError` → HTTP status, snake_case code and the SPEC §6 JSON
//! shape `{"error": {"code", "message"}}`. `status` and `code` are exhaustive matches: a new
//! variant does not compile until someone decides what the client sees. Internal failures map
//! to `500 internal` with no detail (the detail goes to the log).

use bytes::Bytes;
use hyper::StatusCode;

use crate::catalog::recordings::Tombstone;

/// Everything a handler can refuse with.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Conflict {
        code: &'static str,
        message: String,
    },
    /// Sent by a browser for another site's page (see `server::cross_site`).
    CrossSite,
    Deleted(Tombstone),
    /// An objection or erasure waits for a hold: only the roles the hold serves may read.
    DeletionPending,
    Expired,
    Forbidden(String),
    HeadersTooLarge,
    HoldActive(String),
    InsufficientStorage,
    Internal(String),
    InvalidMetadata(String),
    /// With the methods the path takes (the `Allow` header).
    MethodNotAllowed(Vec<&'static str>),
    NoOpenAlarm,
    NotFound,
    /// `404 not_found` saying what was not found.
    NotFoundWhat(String),
    NotImplemented(&'static str),
    PayloadTooLarge(u64),
    PurposeNotAllowed(String),
    PurposeRequired,
    RangeNotSatisfiable(u64),
    Timeout,
    TranscodingUnavailable(String),
    UnknownIdentity,
    UnsupportedAudio(String),
    UnsupportedMediaType(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::CrossSite => StatusCode::FORBIDDEN,
            ApiError::Deleted(_) => StatusCode::GONE,
            ApiError::DeletionPending => StatusCode::GONE,
            ApiError::Expired => StatusCode::GONE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::HoldActive(_) => StatusCode::CONFLICT,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InvalidMetadata(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoOpenAlarm => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::NotFoundWhat(_) => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PurposeNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::PurposeRequired => StatusCode::BAD_REQUEST,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TranscodingUnavailable(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnknownIdentity => StatusCode::FORBIDDEN,
            ApiError::UnsupportedAudio(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict { code, .. } => code,
            ApiError::CrossSite => "cross_site_request",
            ApiError::Deleted(_) => "deleted",
            ApiError::DeletionPending => "deletion_pending",
            ApiError::Expired => "expired",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::HoldActive(_) => "hold_active",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::Internal(_) => "internal",
            ApiError::InvalidMetadata(_) => "invalid_metadata",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NoOpenAlarm => "no_open_alarm",
            ApiError::NotFound | ApiError::NotFoundWhat(_) => "not_found",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::PurposeNotAllowed(_) => "purpose_not_allowed",
            ApiError::PurposeRequired => "purpose_required",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::Timeout => "timeout",
            ApiError::TranscodingUnavailable(_) => "transcoding_unavailable",
            ApiError::UnknownIdentity => "unknown_identity",
            ApiError::UnsupportedAudio(_) => "unsupported_audio",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(why) => why.clone(),
            ApiError::Conflict { message, .. } => message.clone(),
            ApiError::CrossSite => "a request from another site's page is refused: browsers may \
                only open the API's own URLs"
                .into(),
            ApiError::Deleted(tomb) => {
                format!("recording {} was deleted ({})", tomb.id, tomb.reason)
            }
            ApiError::DeletionPending => {
                "the recording is to be deleted (objection or erasure) and \
                is kept only for a litigation hold: only legal and the DPO may read it"
                    .into()
            }
            ApiError::Expired => "the recording's retention period has ended".into(),
            ApiError::Forbidden(why) => why.clone(),
            ApiError::HeadersTooLarge => "the request head is larger than 64 KiB".into(),
            ApiError::HoldActive(why) => why.clone(),
            ApiError::InsufficientStorage => {
                "the server's storage is full; nothing was stored, retry later".into()
            }
            ApiError::Internal(_) => "internal error; the server log has the details".into(),
            ApiError::InvalidMetadata(why) => format!("invalid metadata: {why}"),
            ApiError::MethodNotAllowed(allowed) => {
                format!("this path accepts only {}", allowed.join(", "))
            }
            ApiError::NoOpenAlarm => {
                "this alarm case is not open (closed, or past alarms.max_open): trusted contacts \
                 are readable only through an open case"
                    .into()
            }
            ApiError::NotFound => "no such resource".into(),
            ApiError::NotFoundWhat(what) => what.clone(),
            ApiError::NotImplemented(what) => format!("{what} is not available in this version"),
            ApiError::PayloadTooLarge(limit) => {
                format!("the body exceeds the limit of {limit} bytes")
            }
            ApiError::PurposeNotAllowed(why) => why.clone(),
            ApiError::PurposeRequired => "the `purpose` query parameter is required".into(),
            ApiError::RangeNotSatisfiable(len) => {
                format!("the range is outside the {len}-byte resource")
            }
            ApiError::Timeout => "the client was too slow".into(),
            ApiError::TranscodingUnavailable(why) => why.clone(),
            ApiError::UnknownIdentity => {
                "this client certificate is not registered with a role".into()
            }
            ApiError::UnsupportedAudio(why) => why.clone(),
            ApiError::UnsupportedMediaType(why) => why.clone(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let mut value =
            serde_json::json!({ "error": { "code": self.code(), "message": self.message() } });
        if let ApiError::Deleted(tomb) = self {
            value["tombstone"] = serde_json::json!({
                "id": tomb.id.to_string(),
                "deleted_at": crate::audit::chain::format_time(tomb.deleted_at),
                "reason": tomb.reason,
            });
        }
        Bytes::from(value.to_string())
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    /// A catalog that cannot write for lack of space is the client's `507`, like a full vault:
    /// nothing changed and the same request succeeds once space returns.
    fn from(error: crate::catalog::CatalogError) -> ApiError {
        match error.is_storage_full() {
            true => ApiError::InsufficientStorage,
            false => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<crate::objections::ObjectionError> for ApiError {
    /// The registry's catalog errors as above; a purge that failed after the objection was
    /// recorded is internal (the next purge finishes it).
    fn from(error: crate::objections::ObjectionError) -> ApiError {
        match error {
            crate::objections::ObjectionError::Catalog(error) => ApiError::from(error),
            crate::objections::ObjectionError::Purge(error) => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}

impl From<crate::vault::keys::KeyError> for ApiError {
    fn from(error: crate::vault::keys::KeyError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::objections::ObjectionError;

    /// The status and code a client sees for `error`.
    fn check(error: ApiError, expected: (u16, &str)) {
        assert_eq!((error.status().as_u16(), error.code()), expected);
    }

    #[test]
    fn a_full_catalog_is_507_and_other_catalog_errors_500() {
        // See: issue 6 (disk full).
        let full = crate::catalog::tests::storage_full_error();
        check(ApiError::from(full), (507, "insufficient_storage"));
        let full = crate::catalog::tests::storage_full_error();
        check(
            ApiError::from(ObjectionError::Catalog(full)),
            (507, "insufficient_storage"),
        );
        let corrupt = CatalogError::Corrupt {
            what: "timestamp".into(),
        };
        check(ApiError::from(corrupt), (500, "internal"));
    }
}
