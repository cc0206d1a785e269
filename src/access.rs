//! Who may do what: the closed set of roles a client-certificate CN can be given. The access
//! matrix itself (which role may call which endpoint) lives with the endpoints in `api::routes`.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Role::parse("DPO"), None);
    }
}
