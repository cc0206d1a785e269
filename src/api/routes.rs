//! The access matrix: every endpoint of SPEC §6 as a variant of `Endpoint`, parsed from method
//! and path before any work, and `allowed_roles` as an exhaustive `match` with no wildcard arm,
//! so an endpoint cannot be added without deciding who may call it. Ids are parsed strictly
//! here: a malformed id is a 404, never a path.

use hyper::Method;

use crate::access::Role;
use crate::vault::BlobId;

/// Every endpoint of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    AlarmClose { id: String },
    AlarmContacts { id: String },
    AlarmList,
    AlarmPost,
    AuditList,
    CallObjection { call_id: String },
    ContactsDelete { account: String },
    ContactsPut { account: String },
    HoldExport { id: String },
    HoldGet { id: String },
    HoldList,
    HoldPlace,
    HoldRelease { id: String },
    ObjectionCreate,
    ObjectionList,
    ObjectionWithdraw { id: String },
    QuarantineList,
    RecordingAudio { id: BlobId },
    RecordingDelete { id: BlobId },
    RecordingGet { id: BlobId },
    RecordingList,
    RecordingUpload,
    Status,
    SubjectExport,
    SubjectRecordings,
}

/// Why a request does not name an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// No such path, or a malformed id.
    NotFound,
}

impl Endpoint {
    /// Who may call this. No wildcard arm: a new endpoint must state its roles to compile.
    pub fn allowed_roles(&self) -> &'static [Role] {
        use Role::*;
        match self {
            Endpoint::AlarmClose { .. } => &[Operator],
            Endpoint::AlarmContacts { .. } => &[Operator],
            Endpoint::AlarmList => &[Operator],
            Endpoint::AlarmPost => &[AlarmSource],
            Endpoint::AuditList => &[Dpo],
            Endpoint::CallObjection { .. } => &[Operator],
            Endpoint::ContactsDelete { .. } => &[Contracts],
            Endpoint::ContactsPut { .. } => &[Contracts],
            Endpoint::HoldExport { .. } => &[Legal],
            Endpoint::HoldGet { .. } => &[Legal, Dpo],
            Endpoint::HoldList => &[Legal, Dpo],
            Endpoint::HoldPlace => &[Legal],
            Endpoint::HoldRelease { .. } => &[Legal],
            Endpoint::ObjectionCreate => &[Dpo, Operator],
            Endpoint::ObjectionList => &[Dpo],
            Endpoint::ObjectionWithdraw { .. } => &[Dpo],
            Endpoint::QuarantineList => &[Dpo],
            Endpoint::RecordingAudio { .. } => &[Supervisor, Legal, Dpo],
            Endpoint::RecordingDelete { .. } => &[Dpo],
            Endpoint::RecordingGet { .. } => &[Supervisor, Legal, Dpo],
            Endpoint::RecordingList => &[Supervisor, Legal, Dpo],
            Endpoint::RecordingUpload => &[Recorder],
            Endpoint::Status => &[
                Operator,
                Supervisor,
                Legal,
                Dpo,
                Recorder,
                AlarmSource,
                Contracts,
            ],
            Endpoint::SubjectExport => &[Dpo],
            Endpoint::SubjectRecordings => &[Dpo],
        }
    }

    /// A stable name for metrics and audit (`recording.read_audio`, …): the action of the audit
    /// entry the endpoint writes when it is allowed, so a refusal files under the same action.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::AlarmClose { .. } => "alarm.close",
            Endpoint::AlarmContacts { .. } => "contacts.read",
            Endpoint::AlarmList => "alarm.list",
            Endpoint::AlarmPost => "alarm.open",
            Endpoint::AuditList => "audit.list",
            Endpoint::CallObjection { .. } => "objection.call",
            Endpoint::ContactsDelete { .. } => "contacts.delete",
            Endpoint::ContactsPut { .. } => "contacts.replace",
            Endpoint::HoldExport { .. } => "hold.export",
            Endpoint::HoldGet { .. } => "hold.get",
            Endpoint::HoldList => "hold.list",
            Endpoint::HoldPlace => "hold.place",
            Endpoint::HoldRelease { .. } => "hold.release",
            Endpoint::ObjectionCreate => "objection.create",
            Endpoint::ObjectionList => "objection.list",
            Endpoint::ObjectionWithdraw { .. } => "objection.withdraw",
            Endpoint::QuarantineList => "quarantine.list",
            Endpoint::RecordingAudio { .. } => "recording.read_audio",
            Endpoint::RecordingDelete { .. } => "recording.delete",
            Endpoint::RecordingGet { .. } => "recording.get",
            Endpoint::RecordingList => "recording.list",
            Endpoint::RecordingUpload => "recording.ingest",
            Endpoint::Status => "status",
            Endpoint::SubjectExport => "subject.export",
            Endpoint::SubjectRecordings => "subject.recordings",
        }
    }

    /// The object id the request is about, for the audit entry of a refusal.
    pub fn object(&self) -> String {
        match self {
            Endpoint::AlarmClose { id }
            | Endpoint::AlarmContacts { id }
            | Endpoint::HoldExport { id }
            | Endpoint::HoldGet { id }
            | Endpoint::HoldRelease { id }
            | Endpoint::ObjectionWithdraw { id } => id.clone(),
            Endpoint::RecordingAudio { id }
            | Endpoint::RecordingDelete { id }
            | Endpoint::RecordingGet { id } => id.to_string(),
            // Call ids and accounts are personal data: never an audit object.
            Endpoint::CallObjection { .. }
            | Endpoint::ContactsDelete { .. }
            | Endpoint::ContactsPut { .. } => String::new(),
            Endpoint::AlarmList
            | Endpoint::AlarmPost
            | Endpoint::AuditList
            | Endpoint::HoldList
            | Endpoint::HoldPlace
            | Endpoint::ObjectionCreate
            | Endpoint::ObjectionList
            | Endpoint::QuarantineList
            | Endpoint::RecordingList
            | Endpoint::RecordingUpload
            | Endpoint::Status
            | Endpoint::SubjectExport
            | Endpoint::SubjectRecordings => String::new(),
        }
    }

    /// The methods `path` takes, for the `Allow` header of a `405`.
    pub fn methods_of(path: &str) -> Vec<&'static str> {
        [
            (Method::GET, "GET, HEAD"),
            (Method::POST, "POST"),
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
        ]
        .into_iter()
        .filter(|(method, _)| Endpoint::parse(method, path).is_ok())
        .map(|(_, names)| names)
        .collect()
    }

    /// Parses method and path (without query).
    pub fn parse(method: &Method, path: &str) -> Result<Endpoint, RouteError> {
        let segments: Vec<&str> = match path.strip_prefix("/v1/") {
            Some(rest) => rest.split('/').collect(),
            None => return Err(RouteError::NotFound),
        };
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let put = method == Method::PUT;
        let delete = method == Method::DELETE;
        let pick = |candidates: &[(bool, Endpoint)]| -> Result<Endpoint, RouteError> {
            match candidates.iter().find(|(matches, _)| *matches) {
                Some((_, endpoint)) => Ok(endpoint.clone()),
                None => Err(RouteError::MethodNotAllowed),
            }
        };
        let recording_id = |text: &str| BlobId::parse(text).ok_or(RouteError::NotFound);
        match segments.as_slice() {
            ["status"] => pick(&[(get, Endpoint::Status)]),
            ["recordings"] => pick(&[
                (post, Endpoint::RecordingUpload),
                (get, Endpoint::RecordingList),
            ]),
            ["recordings", id] => {
                let id = recording_id(id)?;
                pick(&[
                    (get, Endpoint::RecordingGet { id }),
                    (delete, Endpoint::RecordingDelete { id }),
                ])
            }
            ["recordings", id, "audio"] => {
                let id = recording_id(id)?;
                pick(&[(get, Endpoint::RecordingAudio { id })])
            }
            ["calls", call_id, "objection"] => {
                let call_id = opaque(call_id)?;
                pick(&[(post, Endpoint::CallObjection { call_id })])
            }
            ["objections"] => pick(&[
                (post, Endpoint::ObjectionCreate),
                (get, Endpoint::ObjectionList),
            ]),
            ["objections", id] => {
                pick(&[(delete, Endpoint::ObjectionWithdraw { id: opaque(id)? })])
            }
            ["holds"] => pick(&[(post, Endpoint::HoldPlace), (get, Endpoint::HoldList)]),
            ["holds", id] => pick(&[(get, Endpoint::HoldGet { id: opaque(id)? })]),
            ["holds", id, "release"] => pick(&[(post, Endpoint::HoldRelease { id: opaque(id)? })]),
            ["holds", id, "export"] => pick(&[(get, Endpoint::HoldExport { id: opaque(id)? })]),
            ["subjects", "recordings"] => pick(&[(get, Endpoint::SubjectRecordings)]),
            ["subjects", "export"] => pick(&[(get, Endpoint::SubjectExport)]),
            ["alarms"] => pick(&[(post, Endpoint::AlarmPost), (get, Endpoint::AlarmList)]),
            ["alarms", id, "close"] => pick(&[(post, Endpoint::AlarmClose { id: opaque(id)? })]),
            ["alarms", id, "contacts"] => {
                pick(&[(get, Endpoint::AlarmContacts { id: opaque(id)? })])
            }
            ["accounts", account, "contacts"] => {
                let account = opaque(account)?;
                pick(&[
                    (
                        put,
                        Endpoint::ContactsPut {
                            account: account.clone(),
                        },
                    ),
                    (delete, Endpoint::ContactsDelete { account }),
                ])
            }
            ["quarantine"] => pick(&[(get, Endpoint::QuarantineList)]),
            ["audit"] => pick(&[(get, Endpoint::AuditList)]),
            _ => Err(RouteError::NotFound),
        }
    }

    /// One representative request per endpoint (method, path), for the access-matrix tests.
    pub fn examples() -> Vec<(Method, String, Endpoint)> {
        let rec = BlobId::from_bytes([0x11; 16]);
        let all = vec![
            Endpoint::AlarmClose { id: "case1".into() },
            Endpoint::AlarmContacts { id: "case1".into() },
            Endpoint::AlarmList,
            Endpoint::AlarmPost,
            Endpoint::AuditList,
            Endpoint::CallObjection {
                call_id: "call1".into(),
            },
            Endpoint::ContactsDelete {
                account: "acct1".into(),
            },
            Endpoint::ContactsPut {
                account: "acct1".into(),
            },
            Endpoint::HoldExport { id: "hold1".into() },
            Endpoint::HoldGet { id: "hold1".into() },
            Endpoint::HoldList,
            Endpoint::HoldPlace,
            Endpoint::HoldRelease { id: "hold1".into() },
            Endpoint::ObjectionCreate,
            Endpoint::ObjectionList,
            Endpoint::ObjectionWithdraw { id: "obj1".into() },
            Endpoint::QuarantineList,
            Endpoint::RecordingAudio { id: rec },
            Endpoint::RecordingDelete { id: rec },
            Endpoint::RecordingGet { id: rec },
            Endpoint::RecordingList,
            Endpoint::RecordingUpload,
            Endpoint::Status,
            Endpoint::SubjectExport,
            Endpoint::SubjectRecordings,
        ];
        all.into_iter()
            .map(|endpoint| {
                let (method, path) = match &endpoint {
                    Endpoint::AlarmClose { id } => (Method::POST, format!("/v1/alarms/{id}/close")),
                    Endpoint::AlarmContacts { id } => {
                        (Method::GET, format!("/v1/alarms/{id}/contacts"))
                    }
                    Endpoint::AlarmList => (Method::GET, "/v1/alarms".into()),
                    Endpoint::AlarmPost => (Method::POST, "/v1/alarms".into()),
                    Endpoint::AuditList => (Method::GET, "/v1/audit".into()),
                    Endpoint::CallObjection { call_id } => {
                        (Method::POST, format!("/v1/calls/{call_id}/objection"))
                    }
                    Endpoint::ContactsDelete { account } => {
                        (Method::DELETE, format!("/v1/accounts/{account}/contacts"))
                    }
                    Endpoint::ContactsPut { account } => {
                        (Method::PUT, format!("/v1/accounts/{account}/contacts"))
                    }
                    Endpoint::HoldExport { id } => (Method::GET, format!("/v1/holds/{id}/export")),
                    Endpoint::HoldGet { id } => (Method::GET, format!("/v1/holds/{id}")),
                    Endpoint::HoldList => (Method::GET, "/v1/holds".into()),
                    Endpoint::HoldPlace => (Method::POST, "/v1/holds".into()),
                    Endpoint::HoldRelease { id } => {
                        (Method::POST, format!("/v1/holds/{id}/release"))
                    }
                    Endpoint::ObjectionCreate => (Method::POST, "/v1/objections".into()),
                    Endpoint::ObjectionList => (Method::GET, "/v1/objections".into()),
                    Endpoint::ObjectionWithdraw { id } => {
                        (Method::DELETE, format!("/v1/objections/{id}"))
                    }
                    Endpoint::QuarantineList => (Method::GET, "/v1/quarantine".into()),
                    Endpoint::RecordingAudio { id } => {
                        (Method::GET, format!("/v1/recordings/{id}/audio"))
                    }
                    Endpoint::RecordingDelete { id } => {
                        (Method::DELETE, format!("/v1/recordings/{id}"))
                    }
                    Endpoint::RecordingGet { id } => (Method::GET, format!("/v1/recordings/{id}")),
                    Endpoint::RecordingList => (Method::GET, "/v1/recordings".into()),
                    Endpoint::RecordingUpload => (Method::POST, "/v1/recordings".into()),
                    Endpoint::Status => (Method::GET, "/v1/status".into()),
                    Endpoint::SubjectExport => (Method::GET, "/v1/subjects/export".into()),
                    Endpoint::SubjectRecordings => (Method::GET, "/v1/subjects/recordings".into()),
                };
                (method, path, endpoint)
            })
            .collect()
    }
}

/// A path segment used as an opaque id: percent-decoded, printable, bounded.
fn opaque(segment: &str) -> Result<String, RouteError> {
    let decoded = percent_decode(segment).ok_or(RouteError::NotFound)?;
    if decoded.is_empty()
        || decoded.len() > 128
        || decoded.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(RouteError::NotFound);
    }
    Ok(decoded)
}

/// Decodes `%XX` escapes; `None` if malformed or not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        match bytes[idx] {
            b'%' => {
                let hex = bytes.get(idx + 1..idx + 3)?;
                let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(value);
                idx += 3;
            }
            byte => {
                out.push(byte);
                idx += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_parses_back_to_its_endpoint() {
        let examples = Endpoint::examples();
        assert_eq!(examples.len(), 25);
        for (method, path, endpoint) in examples {
            assert_eq!(
                Endpoint::parse(&method, &path),
                Ok(endpoint),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn malformed_ids_and_paths_are_not_found() {
        for path in [
            "/v1/recordings/../../etc/passwd",
            "/v1/recordings/%2e%2e",
            "/v1/recordings/xyz/audio",
            "/v1/recordings/0123",
            "/v2/status",
            "/status",
            "/v1/status/",
            "/v1/holds/a%2Fb",
            "/v1/holds/%zz",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(&Method::GET, path),
                    Err(RouteError::NotFound)
                ),
                "{path}"
            );
        }
        assert_eq!(
            Endpoint::parse(&Method::DELETE, "/v1/status"),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn status_is_open_to_every_role_and_audio_to_three() {
        assert_eq!(Endpoint::Status.allowed_roles().len(), Role::ALL.len());
        let audio = Endpoint::RecordingAudio {
            id: BlobId::from_bytes([1; 16]),
        };
        assert_eq!(
            audio.allowed_roles(),
            &[Role::Supervisor, Role::Legal, Role::Dpo]
        );
    }
}
