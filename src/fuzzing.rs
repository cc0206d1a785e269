//! Entry points for the fuzz targets under `tests/fuzz` (cargo fuzz); docs/fuzzing.md lists
//! them. Not API: each function feeds arbitrary bytes to one parser the way the product reaches
//! it, and must never panic, whatever the input. Where the product promises a property (a
//! deframer whose items do not depend on how the bytes are split, a blob that reads back what
//! was sealed and refuses any tampering), the entry point asserts it, so that a broken promise
//! is a crash too.

use std::io::{Read, Seek, SeekFrom};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

use aes_gcm::KeyInit;

use crate::ingest::metadata::{CallMetadata, MAX_METADATA_BYTES, PhoneNumber};
use crate::ingest::probe::FormatHint;
use crate::vault::format::{self, Header};

/// The key of every fuzzed blob and of the seed blob. A constant, not a secret: it protects
/// nothing and exists so that fuzzed blobs can authenticate.
const FUZZ_KEY: [u8; 32] = [7; 32];

/// Boundary of the fuzzed upload bodies (what curl sends, as the README's examples use it).
pub const MULTIPART_BOUNDARY: &str = "------------------------callguardfuzz001";

/// Most plaintext bytes `fuzz_vault_reader` seals (a few chunks of the largest fuzzed size).
const MAX_READER_PLAINTEXT: usize = 4096;

/// The alarm frame parser at every line-number width, and the deframer fed the same bytes
/// whole, in two pieces and one byte at a time, which must give the same items (its promise).
pub fn fuzz_alarm_frame(data: &[u8]) {
    use crate::alarms::frame::{self, Deframer};

    for line_digits in 1..=frame::MAX_LINE_DIGITS as u8 {
        let _ = frame::parse(data, line_digits);
    }
    // Widths 1 (MLR2, the default) and 3 (MLR2000, System III) for the search behind noise.
    for line_digits in [1, 3] {
        let whole = Deframer::new(line_digits).push(data);
        let split = data.first().map_or(0, |&byte| usize::from(byte)) % (data.len() + 1);
        let mut deframer = Deframer::new(line_digits);
        let mut halves = deframer.push(&data[..split]);
        halves.extend(deframer.push(&data[split..]));
        assert_eq!(whole, halves, "deframer items depend on the split");
        let mut deframer = Deframer::new(line_digits);
        let bytewise: Vec<_> = data
            .iter()
            .flat_map(|&byte| deframer.push(&[byte]))
            .collect();
        assert_eq!(whole, bytewise, "deframer items depend on the split");
        assert!(deframer.pending_len() <= frame::MAX_FRAME_LEN);
    }
}

/// The in-memory blob decoder (header, layout, every chunk) with the fuzz key. A blob that
/// opens must be exactly what sealing its plaintext under its header gives (the format is
/// deterministic), and must open the same when its recording id is expected.
pub fn fuzz_vault_decode(data: &[u8]) {
    let cipher = aes_gcm::Aes256Gcm::new(&FUZZ_KEY.into());
    let _ = Header::parse(data);
    let Ok(plaintext) = format::open_all(&cipher, None, data) else {
        return;
    };
    let header = Header::parse(data).expect("invariant: open_all parsed this header");
    assert_eq!(
        format::open_all(&cipher, Some(&header.recording_id), data).as_ref(),
        Ok(&plaintext)
    );
    assert_eq!(
        format::seal_all(&cipher, &header, &plaintext).as_deref(),
        Ok(data),
        "a blob that opens is not what sealing its plaintext gives"
    );
}

/// The streaming blob reader (`vault::store::PlainReader`, which serves audio and its Range
/// requests) on a blob sealed from the input, read in the input's pattern of seeks and reads,
/// which must give the plaintext's bytes; then the blob with one byte flipped, and cut short,
/// which must fail to read. The reader reads files only: each input writes one small blob in
/// a directory of this process under the temporary directory (`TMPDIR`).
///
/// Input: chunk size (1 byte, 16 + value), tamper position (2 bytes), number of operations (1
/// byte, modulo 16), operations (4 bytes each: how to seek, 2-byte offset, read length), then
/// the plaintext.
pub fn fuzz_vault_reader(data: &[u8]) {
    use crate::vault::keys::DataKey;
    use crate::vault::store::PlainReader;
    use crate::vault::{BlobId, Vault};

    /// This thread's scratch vault, removed when the thread ends (test threads; a fuzzer
    /// exits without it, so run it with its own `TMPDIR`, as tests/fuzz/smoke.sh does).
    struct Scratch(Vault);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.dir());
        }
    }
    thread_local! {
        static SCRATCH: Scratch = {
            static N_SCRATCH: AtomicU32 = AtomicU32::new(0);
            let n = N_SCRATCH.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("callguard-fuzz-{}-{n}", std::process::id()));
            Scratch(Vault::open(&dir).expect("invariant: the temporary directory is writable"))
        };
    }
    let [chunk_byte, tamper_hi, tamper_lo, n_ops, rest @ ..] = data else {
        return;
    };
    let n_ops = usize::from(n_ops % 16);
    if rest.len() < 4 * n_ops {
        return;
    }
    let (ops, plaintext) = rest.split_at(4 * n_ops);
    let plaintext = &plaintext[..plaintext.len().min(MAX_READER_PLAINTEXT)];

    let key = DataKey::from_secret(FUZZ_KEY);
    let id = BlobId::from_bytes([0xf5; 16]);
    let header = Header {
        chunk_size: format::MIN_CHUNK_SIZE + u32::from(*chunk_byte),
        recording_id: *id.as_bytes(),
        nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
    };
    let blob = format::seal_all(&key.cipher(), &header, plaintext)
        .expect("invariant: a few chunks are far below the format's 2^32");
    let vault = SCRATCH.with(|scratch| scratch.0.clone());
    let path = vault.blob_path(&id);
    let write = |bytes: &[u8]| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("invariant: the fuzz vault is writable");
        }
        std::fs::write(&path, bytes).expect("invariant: the fuzz vault is writable");
    };

    write(&blob);
    let mut reader =
        PlainReader::danger_open_unaudited(&vault, id, &key).expect("a sealed blob does not open");
    assert_eq!(reader.len(), plaintext.len() as u64);
    let len = plaintext.len() as i128;
    let mut position: i128 = 0;
    for op in ops.chunks_exact(4) {
        let offset = u16::from_be_bytes([op[1], op[2]]);
        let (target, expected) = match op[0] % 3 {
            0 => (SeekFrom::Start(u64::from(offset)), i128::from(offset)),
            1 => (SeekFrom::End(-i64::from(offset)), len - i128::from(offset)),
            _ => {
                let delta = i16::from_be_bytes([op[1], op[2]]);
                (
                    SeekFrom::Current(i64::from(delta)),
                    position + i128::from(delta),
                )
            }
        };
        match reader.seek(target) {
            Ok(now) => {
                assert!(expected >= 0, "seek before the start accepted");
                assert_eq!(i128::from(now), expected);
                position = expected;
            }
            Err(_) => assert!(expected < 0, "seek to {expected} refused"),
        }
        let mut got = Vec::new();
        (&mut reader)
            .take(u64::from(op[3]))
            .read_to_end(&mut got)
            .expect("a sealed blob does not read");
        let start = usize::try_from(position.min(len)).unwrap_or(0);
        let end = usize::try_from((position + i128::from(op[3])).min(len)).unwrap_or(0);
        assert_eq!(got, plaintext[start..end.max(start)], "read at {position}");
        position += got.len() as i128;
    }
    let mut all = Vec::new();
    reader
        .rewind()
        .expect("invariant: seeking to 0 always works");
    reader
        .read_to_end(&mut all)
        .expect("a sealed blob does not read");
    assert_eq!(all, plaintext);
    reader.verify_all().expect("a sealed blob does not verify");

    // One byte flipped, then the blob cut short there: neither reads nor verifies.
    let at = usize::from(u16::from_be_bytes([*tamper_hi, *tamper_lo])) % blob.len();
    let mut flipped = blob.clone();
    flipped[at] ^= 0x01;
    for damaged in [&flipped[..], &blob[..at]] {
        write(damaged);
        if let Ok(mut reader) = PlainReader::danger_open_unaudited(&vault, id, &key) {
            let mut out = Vec::new();
            let read = reader.read_to_end(&mut out);
            assert!(reader.verify_all().is_err(), "damaged blob verified");
            // Opening authenticates the last chunk, so a cut blob never opens; damage in an
            // earlier chunk fails the read that reaches it.
            assert!(read.is_err(), "damaged blob read");
        }
    }
}

/// Configuration units and the whole TOML configuration.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::units::parse_period(&text);
    let _ = crate::config::units::parse_size(&text);
    let _ = crate::config::Config::parse(std::path::Path::new("fuzz.toml"), &text, None);
}

/// A spool sidecar (`NAME.json`) as the spool worker reads it: the metadata parser, then what
/// is done with its result (masked numbers in logs, the error text in a quarantine reason);
/// and the input as one phone number, as `caller`/`callee` and the spool name give them.
pub fn fuzz_sidecar(data: &[u8]) {
    match CallMetadata::from_json(data) {
        Ok(meta) => {
            for number in [&meta.caller, &meta.callee].into_iter().flatten() {
                let _ = (number.masked(), number.last_digits());
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    if let Ok(number) = PhoneNumber::parse(&String::from_utf8_lossy(data)) {
        let _ = (number.masked(), number.last_digits());
    }
}

/// A spool file name: what it is (`classify`), the format hint of an audio name, and the
/// FreePBX/Asterisk name parser in UTC and in the default zone, Europe/Paris (whose daylight
/// saving gaps and folds take their own path), with the error text of a refused name.
pub fn fuzz_spool_name(data: &[u8]) {
    use crate::ingest::spool_name::{self, SpoolFile};

    static PARIS: LazyLock<jiff::tz::TimeZone> = LazyLock::new(|| {
        jiff::tz::TimeZone::get("Europe/Paris").expect("invariant: jiff bundles the tz database")
    });
    let name = String::from_utf8_lossy(data);
    if let SpoolFile::Audio { .. } = spool_name::classify(&name) {
        let _ = FormatHint::from_file_name(&name);
    }
    for zone in [&jiff::tz::TimeZone::UTC, &*PARIS] {
        match spool_name::parse_spool_name(&name, zone) {
            Ok(parsed) => {
                let _ = parsed.into_metadata();
            }
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }
}

/// An upload body (`POST /v1/recordings`): multer over the input with a fixed boundary, then
/// what `api::handlers::recordings::upload_parts` does with the parts up to the pipeline (a
/// `metadata` part read up to `MAX_METADATA_BYTES` and parsed, an `audio` part, its file
/// name's format hint, every byte of it), then the drain of the rest of the body after the
/// answer. The product's reads are mirrored here, not shared: the handler is not factored.
///
/// Input: the size of the pieces the body arrives in (1 byte, value + 1), then the body.
pub fn fuzz_multipart(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("invariant: a current-thread runtime without drivers builds");
    }
    let Some((piece, body)) = data.split_first() else {
        return;
    };
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = body
        .chunks(usize::from(*piece) + 1)
        .map(|piece| Ok(bytes::Bytes::copy_from_slice(piece)))
        .collect();
    let mut multipart =
        multer::Multipart::new(futures_util::stream::iter(pieces), MULTIPART_BOUNDARY);
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let _ = upload_parts(&mut multipart).await;
            // As `drain_multipart`, after any answer.
            while let Ok(Some(mut field)) = multipart.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        });
    });
}

/// The reads of `upload_parts`; `Err` where the handler answers with an error.
async fn upload_parts(multipart: &mut multer::Multipart<'static>) -> Result<(), ()> {
    let mut first = multipart.next_field().await.map_err(drop)?.ok_or(())?;
    if first.name() != Some("metadata") {
        return Err(());
    }
    let mut raw = Vec::new();
    while let Some(chunk) = first.chunk().await.map_err(drop)? {
        if raw.len() + chunk.len() > MAX_METADATA_BYTES {
            return Err(());
        }
        raw.extend_from_slice(&chunk);
    }
    drop(first);
    CallMetadata::from_json(&raw).map_err(drop)?;
    let mut audio = multipart.next_field().await.map_err(drop)?.ok_or(())?;
    if audio.name() != Some("audio") {
        return Err(());
    }
    let _ = match audio.file_name() {
        Some(name) => FormatHint::from_file_name(name),
        None => FormatHint::default(),
    };
    while audio.chunk().await.map_err(drop)?.is_some() {}
    Ok(())
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
        let hint = FormatHint {
            extension: extension.map(str::to_owned),
        };
        let whole = crate::ingest::probe::probe_bytes(data, &hint);
        // The streaming probe (settled in place on a growing prefix, or a worker) must agree
        // with the one-shot probe whatever the pieces; an early refusal may name another error.
        let piece = 1 + usize::from(data.last().copied().unwrap_or(0)) * 61;
        let streamed = probe_in_pieces(data, &hint, piece);
        match (&whole, &streamed) {
            (Err(_), Err(_)) => {}
            _ => assert_eq!(whole, streamed, "streamed in pieces of {piece} bytes"),
        }
    }
}

/// `Prober` fed `data` in pieces of `piece` bytes.
fn probe_in_pieces(
    data: &[u8],
    hint: &FormatHint,
    piece: usize,
) -> Result<crate::ingest::probe::AudioInfo, crate::ingest::probe::ProbeError> {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("invariant: a current-thread runtime without drivers builds");
    }
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let mut prober = crate::ingest::probe::Prober::start(hint.clone());
            for part in data.chunks(piece) {
                if prober
                    .feed(bytes::Bytes::copy_from_slice(part))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            prober.finish().await
        })
    })
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
    use std::path::{Path, PathBuf};

    use super::*;

    type EntryPoint = fn(&[u8]);

    /// Every entry point, by fuzz target name (tests/fuzz/fuzz_targets/NAME.rs).
    const TARGETS: [(&str, EntryPoint); 9] = [
        ("alarm_frame", fuzz_alarm_frame),
        ("audit_entry", fuzz_audit_entry),
        ("config", fuzz_config),
        ("multipart", fuzz_multipart),
        ("probe", fuzz_probe),
        ("sidecar", fuzz_sidecar),
        ("spool_name", fuzz_spool_name),
        ("vault_decode", fuzz_vault_decode),
        ("vault_reader", fuzz_vault_reader),
    ];

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A smoke run of every fuzz entry point on random bytes (the real campaigns run under
        /// cargo fuzz).
        #[test]
        fn entry_points_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for (_, entry_point) in TARGETS {
                entry_point(&data);
            }
        }
    }

    /// Every seed runs through every entry point, and every target has seeds and a binary.
    #[test]
    fn the_seed_corpus_runs() {
        for (name, _) in TARGETS {
            let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            assert!(target.is_file(), "{} is missing", target.display());
            let seeds = fuzz_dir().join("seeds").join(name);
            let n_seeds = std::fs::read_dir(&seeds).map_or(0, |dir| dir.count());
            assert!(n_seeds >= 1, "{} has no seed", seeds.display());
        }
        let mut n_seeds = 0;
        for target in std::fs::read_dir(fuzz_dir().join("seeds"))
            .unwrap()
            .flatten()
        {
            for seed in std::fs::read_dir(target.path()).unwrap().flatten() {
                let data = std::fs::read(seed.path()).unwrap();
                assert!(data.len() <= 4096, "{} is not small", seed.path().display());
                for (_, entry_point) in TARGETS {
                    entry_point(&data);
                }
                n_seeds += 1;
            }
        }
        assert!(n_seeds >= 20, "{n_seeds} seeds");
    }

    /// The inputs the campaigns found (tests/fuzz/artifacts-found/TARGET-what) stay handled:
    /// each runs through its target's entry point without a panic there.
    #[test]
    fn the_found_inputs_stay_handled() {
        let mut n_found = 0;
        for found in std::fs::read_dir(fuzz_dir().join("artifacts-found"))
            .unwrap()
            .flatten()
        {
            let name = found.file_name().to_string_lossy().into_owned();
            let target = TARGETS
                .iter()
                .find(|(target, _)| name.starts_with(&format!("{target}-")));
            let Some((_, entry_point)) = target else {
                panic!("{name} does not start with a target name and `-`");
            };
            entry_point(&std::fs::read(found.path()).unwrap());
            n_found += 1;
        }
        assert!(n_found >= 2, "{n_found} found inputs");
    }

    /// The seeds that only parse when they are right (a frame, an upload, a sidecar, a name,
    /// a blob) are right: a mutation of a working input reaches deeper than random bytes.
    #[test]
    fn the_seeds_are_real_examples() {
        let seeds = |target: &str| -> Vec<(String, Vec<u8>)> {
            let dir = fuzz_dir().join("seeds").join(target);
            let mut out: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(entry.path()).unwrap())
                })
                .collect();
            out.sort();
            out
        };
        for (name, data) in seeds("alarm_frame") {
            let items = crate::alarms::frame::Deframer::new(1).push(&data);
            let frames: Vec<_> = items
                .iter()
                .filter_map(|item| match item {
                    crate::alarms::frame::Deframed::Frame(frame) => Some(frame),
                    crate::alarms::frame::Deframed::Overflow => None,
                })
                .collect();
            assert!(!frames.is_empty(), "{name}: no frame");
            for frame in frames {
                let parsed = crate::alarms::frame::parse(frame, 1);
                assert!(
                    matches!(&parsed, Ok(frame) if frame.is_recognised()),
                    "{name}: {parsed:?}"
                );
            }
        }
        for (name, data) in seeds("sidecar") {
            assert!(CallMetadata::from_json(&data).is_ok(), "{name}");
        }
        for (name, data) in seeds("spool_name") {
            let text = String::from_utf8(data).unwrap();
            assert!(
                crate::ingest::spool_name::parse_spool_name(&text, &jiff::tz::TimeZone::UTC)
                    .is_ok(),
                "{name}"
            );
        }
        for (name, data) in seeds("multipart") {
            let (_, body) = data.split_first().unwrap();
            let mut multipart = multer::Multipart::new(
                futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                    body.to_vec(),
                ))]),
                MULTIPART_BOUNDARY,
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(
                runtime.block_on(upload_parts(&mut multipart)),
                Ok(()),
                "{name}"
            );
        }
        for (name, data) in seeds("probe") {
            let hint = FormatHint::from_file_name(&name);
            let probed = crate::ingest::probe::probe_bytes(&data, &hint);
            assert!(probed.is_ok(), "{name}: {probed:?}");
        }
        let cipher = aes_gcm::Aes256Gcm::new(&FUZZ_KEY.into());
        for (name, data) in seeds("vault_decode") {
            assert!(format::open_all(&cipher, None, &data).is_ok(), "{name}");
        }
    }

    /// The blob seed of `vault_decode` is sealed with the fuzz key; regenerated when it is
    /// missing or stale (r-a `ensure_file_contents`: the test writes it, then fails once).
    #[test]
    fn the_vault_seed_is_current() {
        let cipher = aes_gcm::Aes256Gcm::new(&FUZZ_KEY.into());
        let header = Header {
            chunk_size: format::MIN_CHUNK_SIZE,
            recording_id: *b"callguard-fuzz-1",
            nonce_prefix: *b"nonce-7",
        };
        let blob =
            format::seal_all(&cipher, &header, b"RIFF: a tiny recording in three chunks.").unwrap();
        let path = fuzz_dir().join("seeds/vault_decode/three_chunks.cgv");
        if std::fs::read(&path).ok().as_deref() != Some(&blob[..]) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &blob).unwrap();
            panic!("{} was stale and is rewritten: commit it", path.display());
        }
    }
}
