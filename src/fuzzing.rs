//! Entry points for the fuzz targets under `tests/fuzz` (cargo fuzz). Not API: each function
//! feeds arbitrary bytes to one sans-I/O parser and must never panic, whatever the input.

use aes_gcm::KeyInit;

/// The alarm frame parser and the deframer, on arbitrary bytes split at an arbitrary point.
pub fn fuzz_alarm_frame(data: &[u8]) {
    let line_digits = data.first().map_or(1, |b| b % 7 + 1);
    let _ = crate::alarms::frame::parse(data, line_digits);
    let split = data.len() / 2;
    let mut deframer = crate::alarms::frame::Deframer::new(line_digits);
    let _ = deframer.push(&data[..split]);
    let _ = deframer.push(&data[split..]);
}

/// The vault blob decoder (header, layout, chunk authentication) with a fixed key.
pub fn fuzz_vault_decode(data: &[u8]) {
    let cipher = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
    let _ = crate::vault::format::open_all(&cipher, None, data);
    let _ = crate::vault::format::Header::parse(data);
}

/// Configuration units and the whole TOML configuration.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::units::parse_period(&text);
    let _ = crate::config::units::parse_size(&text);
    let _ = crate::config::Config::parse(std::path::Path::new("fuzz.toml"), &text, None);
}

/// Upload metadata, phone numbers, spool file names.
pub fn fuzz_metadata(data: &[u8]) {
    let _ = crate::ingest::metadata::CallMetadata::from_json(data);
    let text = String::from_utf8_lossy(data);
    let _ = crate::ingest::metadata::PhoneNumber::parse(&text);
    let _ = crate::ingest::spool_name::classify(&text);
    let _ = crate::ingest::spool_name::parse_spool_name(&text, &jiff::tz::TimeZone::UTC);
}

/// The audio probe, under every extension hint it treats specially.
pub fn fuzz_probe(data: &[u8]) {
    for extension in [
        None,
        Some("wav"),
        Some("ulaw"),
        Some("sln"),
        Some("gsm"),
        Some("ogg"),
    ] {
        let hint = crate::ingest::probe::FormatHint {
            extension: extension.map(str::to_owned),
        };
        let _ = crate::ingest::probe::probe_bytes(data, &hint);
    }
}

/// The audit chain verifier on entries decoded from arbitrary bytes.
pub fn fuzz_audit_entry(data: &[u8]) {
    use crate::audit::chain::{AuditDraft, AuditEntry, Outcome, Verifier};
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '|');
    let draft = AuditDraft::new(
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        Outcome::Allowed,
    );
    let entry = AuditEntry::seal(1, jiff::Timestamp::UNIX_EPOCH, draft, [0; 32]);
    let mut verifier = Verifier::new(None);
    let _ = verifier.push(&entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A smoke run of every fuzz entry point on random bytes (the real campaigns run under
        /// cargo fuzz).
        #[test]
        fn entry_points_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            fuzz_alarm_frame(&data);
            fuzz_vault_decode(&data);
            fuzz_config(&data);
            fuzz_metadata(&data);
            fuzz_probe(&data);
            fuzz_audit_entry(&data);
        }
    }

    #[test]
    fn the_seed_corpus_runs() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/seeds");
        let mut n = 0;
        for target in std::fs::read_dir(&seeds).unwrap().flatten() {
            for seed in std::fs::read_dir(target.path()).unwrap().flatten() {
                let data = std::fs::read(seed.path()).unwrap();
                fuzz_alarm_frame(&data);
                fuzz_config(&data);
                fuzz_metadata(&data);
                n += 1;
            }
        }
        assert!(n >= 6);
    }
}
