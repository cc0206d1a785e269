//! Who may do what: the closed set of roles a client-certificate CN can be given, and the
//! purposes each may state to read audio (SPEC §6). The access matrix itself (which role may
//! call which endpoint) lives with the endpoints in `api::routes`.

use std::fmt;

/// A role, as registered with `callguard user add CN --role ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Alarm-management software posting alarm events.
    AlarmSource,
    /// The contracts system maintaining trusted contacts.
    Contracts,
    /// The data-protection officer: objections, subject requests, erasure, audit.
    Dpo,
    /// The legal team: litigation holds and evidence exports.
    Legal,
    /// Operators handling alarms.
    Operator,
    /// The telephony recorder sending recordings.
    Recorder,
    /// Supervisors reviewing recordings.
    Supervisor,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Operator,
        Role::Supervisor,
        Role::Legal,
        Role::Dpo,
        Role::Recorder,
        Role::AlarmSource,
        Role::Contracts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::AlarmSource => "alarm_source",
            Role::Contracts => "contracts",
            Role::Dpo => "dpo",
            Role::Legal => "legal",
            Role::Operator => "operator",
            Role::Recorder => "recorder",
            Role::Supervisor => "supervisor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Purposes a reader may state to read audio (SPEC §6).
pub const PURPOSES: [&str; 5] = [
    "quality_review",
    "training",
    "litigation",
    "data_subject_request",
    "fraud_control",
];

/// Whether `role` may read audio for `purpose`: supervisors for review and training only, legal
/// and the DPO for any, no one else.
pub fn purpose_allowed(role: Role, purpose: &str) -> bool {
    if !PURPOSES.contains(&purpose) {
        return false;
    }
    match role {
        Role::Supervisor => purpose == "quality_review" || purpose == "training",
        Role::Legal | Role::Dpo => true,
        Role::AlarmSource | Role::Contracts | Role::Operator | Role::Recorder => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisors_state_only_review_purposes() {
        assert!(purpose_allowed(Role::Supervisor, "quality_review"));
        assert!(purpose_allowed(Role::Supervisor, "training"));
        assert!(!purpose_allowed(Role::Supervisor, "litigation"));
        assert!(purpose_allowed(Role::Legal, "litigation"));
        assert!(!purpose_allowed(Role::Operator, "training"));
        assert!(!purpose_allowed(Role::Legal, "marketing"));
        assert!(!purpose_allowed(Role::Dpo, ""));
    }

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Role::parse("DPO"), None);
    }
}
